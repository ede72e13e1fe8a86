//! Fuzzes the server's frame decoder: arbitrary bytes through the streaming `FrameCodec` (in
//! the chunks the input itself picks), the one-frame `decode_frame`, and, for every request
//! that decodes, the server's request validation. Nothing may panic.

#![no_main]

use bytes::BytesMut;
use collab_net::wire::validate::{ModelFacts, check_and_decode};
use collab_policies::codec::CodecRegistry;
use collab_net::wire::{FrameCodec, Message, decode_frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let facts = ModelFacts {
        model_id: "deit_tiny_patch16_224".into(),
        layers: 12,
        tokens: 197,
        features: 192,
        input: collab_net::wire::validate::InputFacts::Image { side: 224 },
    };
    let registry = CodecRegistry::builtin();
    let check = |m: &Message| {
        if let Message::InferRequest(r) = m {
            let _ = check_and_decode(&facts, &registry, None, r.clone());
        }
    };
    if let Ok(m) = decode_frame(data) {
        check(&m);
    }
    // Streaming: the first byte picks the chunk size, as a slow or bursty peer would send.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut codec = FrameCodec::new(1 << 16);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => check(&m),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
