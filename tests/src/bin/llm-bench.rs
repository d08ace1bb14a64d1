//! Measures the embedded language model backend against bare llama.cpp on this machine and
//! prints four ratios:
//!
//! 1. reply loop (sampling, grammar, detokenising) tokens/s ÷ a bare greedy decode loop over
//!    the same model and context settings (goal ≥ 0.95);
//! 2. grammar-constrained ÷ unconstrained decoding, both through the backend (≥ 0.95);
//! 3. warm ÷ cold time to first token with a ~1,000-token persona (≤ 0.1);
//! 4. four concurrent conversations' total tokens/s ÷ one conversation (≥ 2.5).
//!
//! Usage: `llm-bench [MODEL.gguf] [THREADS]`; the model defaults to `$FRONTDESK_TEST_MODEL`
//! or the test model that install.sh fetches.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use frontdesk::llm::llama::llama_cpp_2;
use frontdesk::llm::llama::{
    llama_backend, EmbeddedLlama, LlamaOptions, Sampling, DEFAULT_PARALLEL,
};
use frontdesk::llm::{ChatMessage, Generation, LanguageModel, LlmError, Prompt, Role};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use serde_json::{json, Value};

const CONTEXT: u32 = 2048;
const DECODE_TOKENS: u32 = 128;

#[expect(
    clippy::too_many_lines,
    reason = "the benchmark reads as its protocol: load, warm up, each measurement, the report"
)]
fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("FRONTDESK_TEST_MODEL").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let threads: u32 = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    if !model_path.is_file() {
        bail!("model not found: {}", model_path.display());
    }
    let options = LlamaOptions {
        model_path: model_path.clone(),
        chat_template: None,
        gpu_layers: 0,
        threads,
        context_size: CONTEXT,
        sampling: Sampling {
            temperature: 0.7,
            top_p: 0.9,
            repeat_penalty: 1.1,
            max_tokens: DECODE_TOKENS,
            seed: 1,
        },
        queue_depth: 16,
        parallel: DEFAULT_PARALLEL,
    };
    println!(
        "model {}, {threads} threads, context {CONTEXT}",
        model_path.display()
    );
    let schema = reply_schema();
    let persona = persona();

    // 3. Time to first token: cold (persona not cached) vs warm (another customer, same persona).
    let model = EmbeddedLlama::load(options.clone(), None)?;
    let (cold, cold_gen) =
        timed(|| model.generate_with(&prompt(&persona, 0, "Hallo!"), None, Some(1)))?;
    let (warm, warm_gen) =
        timed(|| model.generate_with(&prompt(&persona, 1, "Guten Tag!"), None, Some(1)))?;
    println!(
        "time to first token: cold {:.0} ms ({} prompt tokens evaluated), warm {:.0} ms ({} of {} evaluated)",
        ms(cold),
        cold_gen.evaluated_prompt_tokens,
        ms(warm),
        warm_gen.evaluated_prompt_tokens,
        warm_gen.prompt_tokens
    );
    let ttft_ratio = warm.as_secs_f64() / cold.as_secs_f64();

    // 1 and 2. Decode rates from a cached prompt (only the last prompt token is evaluated).
    let decode_prompt = prompt(
        &persona,
        2,
        "Ich möchte ein Probetraining buchen. Was muss ich mitbringen?",
    );
    model.generate_with(&decode_prompt, None, Some(1))?;
    let constrained = rate(3, || {
        model.generate_with(&decode_prompt, Some(&schema), Some(DECODE_TOKENS))
    })?;
    let unconstrained = rate(3, || {
        model.generate_with(&decode_prompt, None, Some(DECODE_TOKENS))
    })?;
    println!("backend decode: constrained {constrained:.1} tokens/s, unconstrained {unconstrained:.1} tokens/s");

    // 4. Four conversations at once vs the same four one after another (caches warm).
    let conversations: Vec<Prompt> = (0..4)
        .map(|i| {
            prompt(
                &persona,
                10 + i,
                [
                    "Hallo!",
                    "Was kostet das?",
                    "Habt ihr sonntags offen?",
                    "Ich will abnehmen.",
                ][i],
            )
        })
        .collect();
    for p in &conversations {
        model.generate_with(p, None, Some(1))?;
    }
    let started = Instant::now();
    let mut sequential_tokens = 0;
    for p in &conversations {
        sequential_tokens += generated(model.generate_with(p, Some(&schema), Some(DECODE_TOKENS)))?;
    }
    let one = f64::from(sequential_tokens) / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let results: Vec<Result<Generation, _>> = std::thread::scope(|s| {
        let handles: Vec<_> = conversations
            .iter()
            .map(|p| {
                let (model, schema) = (&model, &schema);
                s.spawn(move || model.generate_with(p, Some(schema), Some(DECODE_TOKENS)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut parallel_tokens = 0;
    for r in results {
        parallel_tokens += generated(r)?;
    }
    let four = f64::from(parallel_tokens) / started.elapsed().as_secs_f64();
    println!(
        "conversations: one at a time {one:.1} tokens/s, four at once {four:.1} tokens/s in total"
    );
    println!("backend: {}", model.describe());
    drop(model);

    let (bare, bare_four) = bare_greedy_rate(&options, &persona)?;
    println!("bare greedy decode loop: {bare:.1} tokens/s; four sequences per batch {bare_four:.1} tokens/s");

    println!();
    println!(
        "reply loop ÷ bare decode        {:.2}  (goal ≥ 0.95)",
        constrained / bare
    );
    println!(
        "constrained ÷ unconstrained     {:.2}  (goal ≥ 0.95)",
        constrained / unconstrained
    );
    println!("warm ÷ cold time to first token {ttft_ratio:.3} (goal ≤ 0.1)");
    println!(
        "four ÷ one conversation         {:.2}  (goal ≥ 2.5; bare llama.cpp ceiling here {:.2})",
        four / one,
        bare_four / bare
    );
    Ok(())
}

/// llama.cpp alone: the same prompt, then greedy argmax decoding of one token at a time with
/// the context settings the backend uses.
fn bare_greedy_rate(options: &LlamaOptions, persona: &str) -> Result<(f64, f64)> {
    let backend = llama_backend()?;
    let model = LlamaModel::load_from_file(
        backend,
        &options.model_path,
        &LlamaModelParams::default().with_n_gpu_layers(0),
    )?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CONTEXT))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_seq_max(DEFAULT_PARALLEL as u32 + 1)
        .with_kv_unified(true)
        .with_swa_full(true)
        .with_n_threads(options.threads as i32)
        .with_n_threads_batch(options.threads as i32);
    let mut ctx = model.new_context(backend, params)?;
    let template = model.chat_template(None)?;
    let chat = [
        LlamaChatMessage::new("system".into(), persona.into())?,
        LlamaChatMessage::new(
            "user".into(),
            "Ich möchte ein Probetraining buchen. Was muss ich mitbringen?".into(),
        )?,
    ];
    let text = model.apply_chat_template(&template, &chat, true)?;
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(512, 1);
    for (chunk_idx, chunk) in tokens.chunks(512).enumerate() {
        batch.clear();
        for (i, t) in chunk.iter().enumerate() {
            let pos = chunk_idx * 512 + i;
            batch.add(*t, pos as i32, &[1], pos + 1 == tokens.len())?;
        }
        ctx.decode(&mut batch)?;
    }
    let mut last = batch.n_tokens() - 1;
    let mut pos = tokens.len() as i32;
    let started = Instant::now();
    for _ in 0..DECODE_TOKENS {
        let logits = ctx.get_logits_ith(last);
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as i32)
            .context("empty logits")?;
        batch.clear();
        batch.add(llama_cpp_2::token::LlamaToken(next), pos, &[1], true)?;
        ctx.decode(&mut batch)?;
        last = 0;
        pos += 1;
    }
    let single = f64::from(DECODE_TOKENS) / started.elapsed().as_secs_f64();

    // The hardware's batching ceiling: four sequences sharing that context, one token each
    // per decode.
    let mut batch4 = LlamaBatch::new(8, 1);
    let seqs = [1, 2, 3, 4];
    for seq in &seqs[1..] {
        ctx.kv_cache_seq_cp(1, *seq, None, None)?;
    }
    let mut next_tokens = [llama_cpp_2::token::LlamaToken(0); 4];
    let started = Instant::now();
    for step in 0..DECODE_TOKENS {
        batch4.clear();
        for (i, seq) in seqs.iter().enumerate() {
            if step > 0 {
                let logits = ctx.get_logits_ith(i as i32);
                let best = logits
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(t, _)| t);
                next_tokens[i] = llama_cpp_2::token::LlamaToken(best as i32);
            }
            batch4.add(next_tokens[i], pos, &[*seq], true)?;
        }
        ctx.decode(&mut batch4)?;
        pos += 1;
    }
    let four = f64::from(DECODE_TOKENS * 4) / started.elapsed().as_secs_f64();
    Ok((single, four))
}

fn timed<T, E: Into<anyhow::Error>>(f: impl FnOnce() -> Result<T, E>) -> Result<(Duration, T)> {
    let started = Instant::now();
    let value = f().map_err(Into::into)?;
    Ok((started.elapsed(), value))
}

/// Generated tokens per second over `runs` generations.
fn rate(runs: u32, mut f: impl FnMut() -> Result<Generation, LlmError>) -> Result<f64> {
    let mut tokens = 0;
    let started = Instant::now();
    for _ in 0..runs {
        tokens += generated(f())?;
    }
    Ok(f64::from(tokens) / started.elapsed().as_secs_f64())
}

/// Generated tokens; a reply cut off at the limit still generated the limit.
fn generated(result: Result<Generation, LlmError>) -> Result<u32> {
    match result {
        Ok(g) => Ok(g.generated_tokens),
        Err(LlmError::Schema(m)) if m.contains("cut off") => Ok(DECODE_TOKENS),
        Err(e) => Err(e.into()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn prompt(persona: &str, customer: usize, message: &str) -> Prompt {
    Prompt {
        static_system: persona.to_owned(),
        dynamic_system: format!(
            "Heute ist Montag, der 3. März 2025, 10:15 Uhr. Kunde Nr. {customer}."
        ),
        history: vec![ChatMessage {
            role: Role::User,
            content: message.to_owned(),
        }],
    }
}

fn reply_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "reply": {"type": "string"},
            "profil": {
                "type": "object",
                "properties": {
                    "vorname": {"type": "string"}, "nachname": {"type": "string"},
                    "email": {"type": "string"}, "fitness_ziel": {"type": "string"}
                },
                "additionalProperties": false
            },
            "intent": {"enum": ["none", "book_trial", "reschedule", "cancel_appointment",
                "complaint", "contract_question", "opt_out", "question"]},
            "wunschtermin": {"type": ["string", "null"]}
        },
        "required": ["reply", "profil", "intent", "wunschtermin"],
        "additionalProperties": false
    })
}

/// A studio persona of about 1,000 tokens (for this model's tokenizer).
fn persona() -> String {
    let mut text = String::from(
        "Du bist Lena, die digitale Assistentin des Studios \"PowerFit Köln\". Du antwortest \
         freundlich, kurz und auf Deutsch in der Du-Form. Antworte nur mit JSON wie in diesem \
         Beispiel: {\"reply\": \"Gerne! Wann hast du Zeit?\", \"profil\": {\"vorname\": \"Max\"}, \
         \"intent\": \"book_trial\", \"wunschtermin\": null}\n\nStudio-Fakten:\n",
    );
    let facts = [
        "Öffnungszeiten: Montag bis Freitag 7 bis 22 Uhr, Samstag und Sonntag 9 bis 18 Uhr.",
        "Das Probetraining ist kostenlos und dauert etwa 60 Minuten mit einem Trainer.",
        "Mitgliedschaften gibt es ab 29,90 Euro im Monat bei 24 Monaten Laufzeit.",
        "Die Flex-Mitgliedschaft kostet 44,90 Euro im Monat und ist monatlich kündbar.",
        "EMS-Training wird in 20-minütigen Einheiten mit persönlicher Betreuung angeboten.",
        "Bitte bring zum Training Sportkleidung, saubere Hallenschuhe und ein Handtuch mit.",
        "Duschen und Umkleiden sind vorhanden; Schlösser für die Spinde gibt es am Empfang.",
        "Parkplätze stehen kostenlos im Hof zur Verfügung, die Straßenbahn hält direkt vor der Tür.",
        "Kündigungen bitte schriftlich an den Empfang oder per E-Mail an das Studio-Team.",
        "Beschwerden nimmst du ernst, entschuldigst dich und gibst sie an das Team weiter.",
        "Du gibst keine medizinischen Ratschläge; bei Beschwerden empfiehlst du einen Arzt.",
        "Kurse: Rückenfit, Yoga, Spinning, Functional Training und Zumba laut Kursplan.",
    ];
    let mut round = 0;
    while text.len() < 2200 {
        for fact in facts {
            text.push_str(&format!("- {fact}"));
            if round > 0 {
                text.push_str(&format!(" (Hinweis {round})"));
            }
            text.push('\n');
        }
        round += 1;
    }
    text
}
