//! Runnable examples, and the pieces the decode example is made of (also used by its tests):
//! a small decoder model ([`model`]), a serving loop over the paged KV cache ([`engine`]), and a
//! third-party allocator ([`arena`]).

pub mod arena;
pub mod chat;
pub mod decode;
pub mod engine;
pub mod gguf;
mod linear;
pub mod llama_gguf;
pub mod llm;
pub mod model;
pub mod sampling;
pub mod tokenizer;
