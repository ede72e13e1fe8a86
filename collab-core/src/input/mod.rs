//! Turning raw inputs into model inputs: image preprocessing and tokenisation.

mod image;
mod text;

pub use image::{ImagePreprocess, load_image_batch};
pub use text::SentenceTokenizer;
