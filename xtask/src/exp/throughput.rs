//! placeholder, replaced below
use anyhow::Result;
/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}
pub(crate) fn run(_a: Args) -> Result<()> { anyhow::bail!("not yet") }
