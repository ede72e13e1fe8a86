//! collab's codec conformance suite: round trips within the error bound, exact encoded
//! lengths, and hostile payloads (truncated, padded, lying sizes) refused without panics.

use collab_policies::codec::conformance::CodecSpec;
use collab_policies::codec_conformance;
use {{crate}}::UniformQuant;

codec_conformance!(
    eight_bits,
    || UniformQuant::new(8).expect("8 bits"),
    CodecSpec {
        max_relative_error: Some(0.02),
        ..CodecSpec::default()
    }
);
codec_conformance!(four_bits, || UniformQuant::new(4).expect("4 bits"));
