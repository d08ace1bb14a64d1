//! `frontdesk demo` end to end with the real llama.cpp and the small test model: lines typed as
//! the customer go through the signed webhook, the store, the engine and the model, and the
//! reply comes back through the Graph API simulator.

use frontdesk_tests::harness::run_demo;

#[test]
fn demo_answers_through_the_whole_pipeline_and_discloses_the_ai() {
    let run = run_demo(&[], "Hallo! Was ist ein Probetraining?");
    let (text, reply) = (run.output, run.reply);
    // The first reply to a new contact says that the assistant is an AI (EU AI Act Art. 50),
    // whatever the model wrote.
    let lower = reply.to_lowercase();
    assert!(
        lower.contains("ki") || lower.contains("digital"),
        "first reply lacks the AI disclosure: {reply}"
    );
    assert!(text.contains("state directory is deleted"));
}
