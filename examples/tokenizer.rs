//! The tokenizer and chat template a GGUF file describes, built the way Hugging Face
//! transformers builds them from the same file, so prompts become the same token ids.
//!
//! A GGUF carries no `tokenizer.json`: it stores the vocabulary, the merges, each token's type
//! and the special token ids as metadata under llama.cpp's keys, and the chat template as a
//! Jinja string. For a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`, as GPT-2,
//! SmolLM and most Llama-architecture files) transformers hands vocabulary and merges to its
//! GPT-2 tokenizer (byte-level pre-tokenizer with GPT-2's split, no prefix space; byte-level
//! decoder) and adds the tokens the file marks as control (type 3) as special tokens; this does
//! the same through the `tokenizers` crate, the Rust library transformers' own fast tokenizers
//! are. The chat template is rendered with `minijinja`, the Jinja engine Rust serving stacks
//! (mistral.rs, TGI's router) render Hugging Face templates with.
//!
//! ```no_run
//! use ascend_examples::gguf::Gguf;
//! use ascend_examples::tokenizer::{GgufTokenizer, Message};
//!
//! let file = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let tok = GgufTokenizer::from_gguf(&file)?;
//! let prompt = tok.chat_prompt(&[Message::user("What is a paged KV cache?")])?;
//! let ids = tok.encode(&prompt)?;
//! assert_eq!(tok.decode(&ids)?, prompt);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::gguf::{Array, Gguf, Value};

/// What can go wrong building or using the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tokenizer: {}", self.0)
    }
}

impl std::error::Error for TokenizerError {}

type Result<T> = std::result::Result<T, TokenizerError>;

fn err(message: impl fmt::Display) -> TokenizerError {
    TokenizerError(message.to_string())
}

/// llama.cpp's token type for a control token (`<|im_start|>`, `<|endoftext|>`, ...).
const CONTROL: i64 = 3;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
}

/// A GGUF file's tokenizer, special tokens and chat template.
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    vocab_size: usize,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// GPT-2's map from bytes to printable characters (`bytes_to_unicode`): printable Latin-1 bytes
/// stand for themselves, the rest take the code points from 256 up, in byte order.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("code points 256..324 are characters");
            next += 1;
            c
        };
    }
    map
}

fn strings<'a>(file: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    let values = file
        .get(key)
        .map_err(err)?
        .as_array()
        .and_then(Array::strings)
        .ok_or_else(|| err(format!("{key} is not an array of strings")))?;
    Ok(values.iter().map(String::as_str).collect())
}

impl GgufTokenizer {
    /// The tokenizer of a byte-level BPE file (`tokenizer.ggml.model = "gpt2"`). Other kinds
    /// (sentencepiece `llama`, unigram `t5`) are refused by name.
    pub fn from_gguf(file: &Gguf) -> Result<Self> {
        let kind = file.get_str("tokenizer.ggml.model").map_err(err)?;
        if kind != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model is {kind:?}; only byte-level BPE (\"gpt2\") is built here"
            )));
        }
        if let Ok(pre) = file.get_str("tokenizer.ggml.pre") {
            // Vocabularies whose merges were learned on another split (Llama 3's, Qwen 2's, ...)
            // need that split; GPT-2's is right for the rest ("default", "smollm", "gpt-2").
            const OTHER_SPLITS: [&str; 9] = [
                "llama3",
                "llama-v3",
                "llama-bpe",
                "qwen2",
                "qwen35",
                "gpt-4o",
                "llama4",
                "tekken",
                "deepseek-r1-qwen",
            ];
            if OTHER_SPLITS.contains(&pre) {
                return Err(err(format!(
                    "tokenizer.ggml.pre is {pre:?}, whose split is not built here (GPT-2's only)"
                )));
            }
        }
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match file.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.integers().unwrap_or_default(),
            _ => Vec::new(),
        };

        // Tokens are stored spelled in the byte alphabet; one that is not (a mislabelled
        // special token, say) is spelled from its UTF-8 bytes, as transformers does.
        let alphabet = byte_alphabet();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let spell = |t: &str| -> String {
            if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            }
        };
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(spell(t), i as u32);
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (a, b) = m
                    .split_once(' ')
                    .ok_or_else(|| err(format!("merge {i} ({m:?}) is not two tokens")))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("building the BPE model: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(t, &ty)| ty == CONTROL && in_alphabet(t))
            .map(|(t, _)| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        tokenizer
            .add_special_tokens(control)
            .map_err(|e| err(format!("adding the control tokens: {e}")))?;

        let special = |key: &str| -> Result<Option<(u32, String)>> {
            match file.get_u64(key) {
                Ok(id) => {
                    let t = tokens.get(id as usize).ok_or_else(|| {
                        err(format!(
                            "{key} = {id} is outside the {} tokens",
                            tokens.len()
                        ))
                    })?;
                    Ok(Some((id as u32, t.to_string())))
                }
                Err(_) => Ok(None),
            }
        };
        let add_bos = matches!(
            file.metadata.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        Ok(GgufTokenizer {
            tokenizer,
            vocab_size: tokens.len(),
            bos: special("tokenizer.ggml.bos_token_id")?,
            eos: special("tokenizer.ggml.eos_token_id")?,
            add_bos,
            chat_template: file.get_str("tokenizer.chat_template").ok().map(Into::into),
        })
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The end-of-sequence token (for an instruct model, the end of a turn), if the file names
    /// one.
    pub fn eos(&self) -> Option<u32> {
        self.eos.as_ref().map(|(id, _)| *id)
    }

    /// The token with this exact spelling, if there is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Token ids of `text`, special tokens written in it (`<|im_start|>`) matched whole; with
    /// the beginning-of-sequence token first when the file says to add it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| err(format!("encoding: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let (true, Some((bos, _))) = (self.add_bos, &self.bos) {
            ids.push(*bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(err(format!(
                "token {bad} is outside the {} tokens",
                self.vocab_size
            )));
        }
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| err(format!("decoding: {e}")))
    }

    /// A streaming decoder: feed it ids one at a time and it returns text as soon as it is whole
    /// characters (a character split over several byte tokens waits for its last byte).
    pub fn stream(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream {
            tok: self,
            skip_special_tokens,
            ids: Vec::new(),
            shown: 0,
        }
    }

    /// `messages` rendered with the file's chat template, ending with the assistant's turn
    /// opened (`add_generation_prompt`), as transformers' `apply_chat_template` renders it.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| err("the file has no tokenizer.chat_template"))?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| err(format!("the chat template does not parse: {e}")))?;
        let messages: Vec<HashMap<&str, &str>> = messages
            .iter()
            .map(|m| HashMap::from([("role", m.role.as_str()), ("content", m.content.as_str())]))
            .collect();
        let name =
            |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => name(&self.bos),
                    eos_token => name(&self.eos),
                })
            })
            .map_err(|e| err(format!("rendering the chat template: {e}")))
    }
}

/// Incremental detokenization (see [`GgufTokenizer::stream`]).
pub struct TextStream<'a> {
    tok: &'a GgufTokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    shown: usize,
}

impl TextStream<'_> {
    /// Adds `id` and returns the text it completes (empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self
            .tok
            .tokenizer
            .decode(&self.ids, self.skip_special_tokens)
            .map_err(|e| err(format!("decoding: {e}")))?;
        // An incomplete UTF-8 sequence decodes to U+FFFD at the end: wait for the rest.
        let new = match text.get(self.shown..) {
            Some(new) if !text.ends_with('\u{FFFD}') => new.to_string(),
            _ => return Ok(String::new()),
        };
        self.shown = text.len();
        Ok(new)
    }
}
