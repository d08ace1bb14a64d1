"""A real SMTP server on loopback for the staff alert tests (aiosmtpd from PyPI).

    smtp_sink.py --dir DIR [--fail N]

Listens on 127.0.0.1 at a free port and prints "PORT <n>" on its first line once it accepts
connections. Every message it accepts is written to DIR as <n>.eml (the envelope in X-Envelope-*
headers in front of the message as received) and its text body, decoded, as <n>.txt; the .eml
is renamed into place last, so a reader that sees it finds both files whole. The first N messages are refused with 451 (a temporary
failure) before any is accepted. Runs until it is killed or its standard input closes.
"""

import argparse
import asyncio
import email
import email.policy
import os
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, out, fail):
        self.out = out
        self.fail = fail
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        if self.fail > 0:
            self.fail -= 1
            return "451 4.3.0 Try again later"
        self.count += 1
        path = os.path.join(self.out, f"{self.count}.eml")
        head = f"X-Envelope-From: {envelope.mail_from}\r\n"
        for rcpt in envelope.rcpt_tos:
            head += f"X-Envelope-To: {rcpt}\r\n"
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        with open(os.path.join(self.out, f"{self.count}.txt"), "w", encoding="utf-8") as f:
            f.write(parsed.get_body(preferencelist=("plain",)).get_content())
        with open(path + ".part", "wb") as f:
            f.write(head.encode())
            f.write(raw)
        os.rename(path + ".part", path)
        return "250 2.0.0 Accepted"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--fail", type=int, default=0)
    args = ap.parse_args()
    sink = Sink(args.dir, args.fail)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="sink.test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    # Stop when the test closes our standard input (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
