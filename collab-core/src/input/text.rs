//! Sentence tokenisation with a Hugging Face `tokenizer.json` (WordPiece for BERT/MiniLM).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::{Error, Result};

/// A tokenizer for sentence encoders: no padding (the model masks unequal lengths itself),
/// truncation to the model's maximum length, special tokens added.
#[derive(Debug, Clone)]
pub struct SentenceTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl SentenceTokenizer {
    /// Loads `tokenizer.json`, switching its padding off and truncating to `max_len` tokens.
    ///
    /// # Errors
    /// [`Error::MissingFile`] or [`Error::BadFile`].
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "tokenizer.json of the model".into(),
            });
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::BadFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self { inner, max_len })
    }

    /// Token ids of `text`, with `[CLS]` and `[SEP]`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the tokenizer rejects the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::InvalidInput(format!("cannot tokenise {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The truncation length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}
