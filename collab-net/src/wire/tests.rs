//! Frame round trips and the decoder's behaviour on hostile bytes.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

fn request(payload: Vec<u8>) -> Message {
    Message::InferRequest(InferRequest {
        request_id: 7,
        split: 3,
        codec: "int8".parse().expect("codec id"),
        payload,
        budget_ms: 250,
        max_loss: 0.01,
        meta: None,
    })
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(n, pad)| { Message::Ping(Ping { nonce: n, pad }) }),
        any::<u64>().prop_map(|nonce| Message::Pong(Pong { nonce })),
        (any::<u64>(), 1usize..5, 1usize..6).prop_map(|(id, n, g)| {
            Message::PersonaliseRequest(PersonaliseRequest {
                request_id: id,
                upload: collab_core::distill::Upload {
                    kind: collab_core::distill::UploadKind::Prototypes { group_size: g },
                    classes: 3,
                    vectors: vec![vec![0.2, 0.3, 0.5]; n],
                    members: vec![g; n],
                },
            })
        }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(id, b)| {
            Message::PersonaliseResponse(PersonaliseResponse {
                request_id: id,
                outcome: if id % 3 == 0 {
                    Err(RemoteError::Invalid("no".into()))
                } else {
                    Ok(b)
                },
            })
        }),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(request),
        (1u32..20, any::<bool>()).prop_map(|(n, masked)| {
            let Message::InferRequest(r) = request(vec![1; n as usize]) else {
                unreachable!("a request")
            };
            Message::InferRequest(InferRequest {
                meta: Some(TokenMeta {
                    protected: 1,
                    mask: masked.then(|| vec![1; n as usize]),
                    sizes: Some(vec![2.0; n as usize]),
                }),
                ..r
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u32>(), -10f32..10.0), 0..6)
        )
            .prop_map(|(id, top)| Message::InferResponse(InferResponse {
                request_id: id,
                outcome: Ok(Prediction {
                    top,
                    embedding: vec![0.25; (id % 4) as usize],
                    server_ms: 1.5,
                    batch: 4
                }),
            })),
        any::<u32>().prop_map(|b| Message::InferResponse(InferResponse {
            request_id: 1,
            outcome: Err(RemoteError::DeadlineMissed { budget_ms: b }),
        })),
        "[a-z]{0,12}".prop_map(|s| Message::Hello(Hello {
            instance: 7,
            device_id: s.clone(),
            model_id: s,
            protocol_version: PROTOCOL_VERSION,
            auth_token: "t".into(),
        })),
        proptest::collection::vec(any::<u32>(), 0..14).prop_map(|q| Message::ServerLoad(
            ServerLoad {
                position_ms: q.iter().map(|&v| v as f32).collect(),
                queues: q,
                in_flight: 3,
                capacity: 9
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any sequence of messages, encoded back to back and fed in arbitrary chunks, decodes to
    /// the same sequence.
    #[test]
    fn frames_round_trip_in_any_chunking(
        messages in proptest::collection::vec(any_message(), 1..6),
        chunk in 1usize..97,
    ) {
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        for m in &messages {
            codec.encode(m.clone(), &mut wire).expect("encode");
        }
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(m) = codec.decode(&mut buf).expect("decode") {
                out.push(m);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).expect("eof").is_none());
        prop_assert_eq!(out, messages);
    }

    /// Random bytes never panic the decoder: each call is a message, "need more" or a typed
    /// error.
    #[test]
    fn random_bytes_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_frame(&bytes);
        let mut codec = FrameCodec::new(256);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = codec.decode_eof(&mut buf);
        // A valid prefix and version with a random body.
        let mut framed = ((bytes.len() + 2) as u32).to_be_bytes().to_vec();
        framed.extend(PROTOCOL_VERSION.to_be_bytes());
        framed.extend(&bytes);
        let _ = decode_frame(&framed);
    }

    /// A frame cut anywhere is "need more", and a truncated stream is a typed error at EOF.
    #[test]
    fn truncated_frames_wait_then_fail_at_eof(m in any_message(), cut in 0.0f64..1.0) {
        let bytes = encode_frame(&m).expect("encode");
        let at = ((bytes.len() as f64) * cut) as usize;
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&bytes[..at]);
        prop_assert!(codec.decode(&mut buf).expect("partial").is_none());
        let eof = codec.decode_eof(&mut buf);
        if at == 0 {
            prop_assert!(eof.expect("empty").is_none());
        } else {
            prop_assert!(matches!(eof, Err(FrameError::Truncated { .. })), "{eof:?}");
        }
    }
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut codec = FrameCodec::new(1000);
    let mut buf = BytesMut::from(&5000u32.to_be_bytes()[..]);
    let err = codec.decode(&mut buf).expect_err("too large");
    assert!(
        matches!(
            err,
            FrameError::TooLarge {
                len: 5000,
                max: 1000
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_remote(),
        Some(RemoteError::FrameTooLarge {
            len: 5000,
            max: 1000
        })
    );
    // The encoder refuses to produce what the peer would refuse.
    let mut out = BytesMut::new();
    assert!(codec.encode(request(vec![0; 2000]), &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn other_versions_and_trailing_bytes_are_typed_errors() {
    let mut bytes = encode_frame(&Message::Pong(Pong { nonce: 1 })).expect("encode");
    bytes[4..6].copy_from_slice(&9u16.to_be_bytes());
    let err = decode_frame(&bytes).expect_err("version");
    assert!(matches!(err, FrameError::Version { got: 9 }));
    assert!(matches!(
        err.to_remote(),
        Some(RemoteError::UnsupportedVersion { got: 9, .. })
    ));

    let mut bytes = encode_frame(&Message::Pong(Pong { nonce: 1 })).expect("encode");
    bytes.push(0);
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) + 1;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        decode_frame(&bytes),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 1, 0]),
        Err(FrameError::TooShort { len: 1 })
    ));
}

#[test]
fn framing_overhead_is_small() {
    let payload = vec![1u8; 38_000];
    let bytes = encode_frame(&request(payload)).expect("encode");
    let overhead = bytes.len() - 38_000;
    assert!(overhead < 32, "{overhead} bytes of framing");
}

mod validation {
    use collab_core::split::{Activation, ActivationCodec};
    use collab_policies::codec::CodecRegistry;
    use collab_policies::svd::{Family, PlainCodec, Precision, SplitBases, SplitBasis, SvdCodec};

    use super::super::validate::{Decoded, ModelFacts};
    use super::*;

    /// The two validation steps with the built-in codecs.
    fn check_request(
        facts: &ModelFacts,
        bases: Option<&SplitBases>,
        request: &InferRequest,
    ) -> Result<Decoded, RemoteError> {
        let registry = CodecRegistry::builtin();
        super::super::validate::check_and_decode(facts, &registry, bases, request.clone())
    }

    fn facts() -> ModelFacts {
        ModelFacts {
            model_id: "m".into(),
            layers: 4,
            tokens: 5,
            features: 8,
            input: super::super::validate::InputFacts::Image { side: 4 },
        }
    }

    fn req(split: u32, codec: &str, payload: Vec<u8>) -> InferRequest {
        InferRequest {
            request_id: 1,
            split,
            codec: codec.parse().expect("codec id"),
            payload,
            budget_ms: 100,
            max_loss: 0.0,
            meta: None,
        }
    }

    fn act(tokens: usize, features: usize) -> Activation {
        let values = (0..tokens * features).map(|i| i as f32 * 0.1).collect();
        Activation::new(tokens, features, values).expect("activation")
    }

    fn invalid(r: Result<Decoded, RemoteError>, needle: &str) {
        match r {
            Err(RemoteError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected Invalid containing `{needle}`, got {other:?}"),
        }
    }

    #[test]
    fn accepts_what_the_model_expects() {
        let int8 = PlainCodec {
            precision: Precision::Int8,
        };
        let ok = check_request(
            &facts(),
            None,
            &req(2, "int8", int8.encode(&act(5, 8)).expect("enc")),
        );
        assert!(matches!(ok, Ok(Decoded::Hidden(h)) if h.dims == [1, 5, 8] && h.protected == 1));
        let svd = SvdCodec {
            rank: 3,
            precision: Precision::Int8,
        };
        let name = Family::Svd(Precision::Int8).to_string();
        let ok = check_request(
            &facts(),
            None,
            &req(
                4,
                &format!("{name}-r3"),
                svd.encode(&act(5, 8)).expect("enc"),
            ),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let ok = check_request(&facts(), None, &req(0, RAW_RGB8, vec![0; 48]));
        assert!(matches!(ok, Ok(Decoded::Pixels(p)) if p.len() == 48));
    }

    fn text_facts() -> ModelFacts {
        ModelFacts {
            input: super::super::validate::InputFacts::Text { vocab: 100 },
            ..facts()
        }
    }

    fn ids(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|t| t.to_le_bytes()).collect()
    }

    #[test]
    fn text_requests_are_bounded_by_the_model_before_allocating() {
        let ok = check_request(&text_facts(), None, &req(0, "tokens", ids(&[1, 7, 2])));
        assert!(
            matches!(&ok, Ok(Decoded::Tokens(t)) if *t == vec![1, 7, 2]),
            "{ok:?}"
        );
        // More ids than the model's positions, a ragged length, no ids, an id past the
        // vocabulary, image pixels for a text model.
        invalid(
            check_request(&text_facts(), None, &req(0, "tokens", ids(&[1; 6]))),
            "1 to 5 token ids",
        );
        invalid(
            check_request(&text_facts(), None, &req(0, "tokens", vec![1, 2, 3])),
            "3 bytes",
        );
        invalid(
            check_request(&text_facts(), None, &req(0, "tokens", vec![])),
            "0 bytes",
        );
        invalid(
            check_request(&text_facts(), None, &req(0, "tokens", ids(&[1, 100]))),
            "token id 100",
        );
        invalid(
            check_request(&text_facts(), None, &req(0, RAW_RGB8, vec![0; 48])),
            "takes codec `tokens`",
        );
    }

    #[test]
    fn token_meta_must_fit_the_decoded_tokens() {
        let f32c = PlainCodec {
            precision: Precision::F32,
        };
        let payload = f32c.encode(&act(5, 8)).expect("enc");
        let with = |meta: TokenMeta| InferRequest {
            meta: Some(meta),
            ..req(2, "f32", payload.clone())
        };
        let good = TokenMeta {
            protected: 1,
            mask: Some(vec![1, 1, 1, 0, 0]),
            sizes: Some(vec![1.0, 2.0, 1.0, 1.0, 1.0]),
        };
        let ok = check_request(&facts(), None, &with(good.clone()));
        assert!(
            matches!(&ok, Ok(Decoded::Hidden(h)) if h.mask.as_deref() == Some(&[1.0, 1.0, 1.0, 0.0, 0.0][..])),
            "{ok:?}"
        );
        for (meta, needle) in [
            (
                TokenMeta {
                    mask: Some(vec![1; 4]),
                    ..good.clone()
                },
                "a mask of 4 values",
            ),
            (
                TokenMeta {
                    mask: Some(vec![1, 1, 2, 1, 1]),
                    ..good.clone()
                },
                "each 0 or 1",
            ),
            (
                TokenMeta {
                    mask: Some(vec![1, 0, 1, 0, 0]),
                    ..good.clone()
                },
                "ones first",
            ),
            (
                TokenMeta {
                    mask: Some(vec![0; 5]),
                    ..good.clone()
                },
                "at least one",
            ),
            (
                TokenMeta {
                    sizes: Some(vec![1.0; 6]),
                    ..good.clone()
                },
                "6 token sizes",
            ),
            (
                TokenMeta {
                    sizes: Some(vec![1.0, f32::NAN, 1.0, 1.0, 1.0]),
                    ..good.clone()
                },
                "token sizes",
            ),
            (
                TokenMeta {
                    sizes: Some(vec![1.0, 0.5, 1.0, 1.0, 1.0]),
                    ..good.clone()
                },
                "token sizes",
            ),
            (
                TokenMeta {
                    protected: 6,
                    ..good.clone()
                },
                "6 protected tokens of 5",
            ),
        ] {
            invalid(check_request(&facts(), None, &with(meta)), needle);
        }
        // Per-token facts on a server-only request.
        let mut raw = req(0, RAW_RGB8, vec![0; 48]);
        raw.meta = Some(good);
        invalid(check_request(&facts(), None, &raw), "no per-token facts");
    }

    #[test]
    fn names_what_is_wrong() {
        let f32c = PlainCodec {
            precision: Precision::F32,
        };
        let good = f32c.encode(&act(5, 8)).expect("enc");
        invalid(
            check_request(&facts(), None, &req(5, "f32", good.clone())),
            "past the model",
        );
        invalid(
            check_request(&facts(), None, &req(1, "zip", good.clone())),
            "unknown codec",
        );
        invalid(
            check_request(&facts(), None, &req(1, "pca", good.clone())),
            "shared basis",
        );
        invalid(
            check_request(&facts(), None, &req(1, "int8", good.clone())),
            "precision",
        );
        invalid(
            check_request(&facts(), None, &req(1, "f32", good[..30].to_vec())),
            "bytes",
        );
        let wrong = f32c.encode(&act(6, 8)).expect("enc");
        invalid(
            check_request(&facts(), None, &req(1, "f32", wrong)),
            "expects 5 x 8",
        );
        invalid(
            check_request(&facts(), None, &req(0, "f32", good.clone())),
            "server-only",
        );
        invalid(
            check_request(&facts(), None, &req(0, RAW_RGB8, vec![0; 47])),
            "47 bytes",
        );
        let mut zero = req(1, "f32", good.clone());
        zero.budget_ms = 0;
        invalid(check_request(&facts(), None, &zero), "budget_ms");
        let mut nan = req(1, "f32", good);
        nan.max_loss = f32::NAN;
        invalid(check_request(&facts(), None, &nan), "max_loss");
    }

    /// Bases fitted on seeded 5 x 8 activations at splits 1 and 2 (`seed` varies them).
    fn bases(seed: u64) -> SplitBases {
        let mut bases = SplitBases::new("m");
        for split in [1, 2] {
            let items: Vec<Activation> = (0..4)
                .map(|i| {
                    let values = (0..40)
                        .map(|j| ((j * 7 + i * 13 + seed as usize) % 11) as f32 * 0.3 - 1.0)
                        .collect();
                    Activation::new(5, 8, values).expect("activation")
                })
                .collect();
            let basis = SplitBasis::fit(&items, &format!("block {split}")).expect("fit");
            bases.insert(split, basis).expect("insert");
        }
        bases
    }

    #[test]
    fn calibrated_codecs_decode_with_the_servers_bases() {
        let held = bases(0);
        for family in [
            Family::CentredPca(Precision::Int8),
            Family::MaskedPca,
            Family::TransformPca,
            Family::HybridSvd(Precision::F32),
            Family::Pca(Precision::F32),
        ] {
            let shared = held.shared(2, family).expect("held");
            let codec = family.build_with(3, shared).expect("build");
            let x = act(5, 8);
            let payload = codec.encode(&x).expect("encode");
            let ok = check_request(
                &facts(),
                Some(&held),
                &req(2, &format!("{family}-r3"), payload),
            );
            let Ok(Decoded::Hidden(y)) = ok else {
                panic!("{family}: {ok:?}");
            };
            assert_eq!(
                y.x,
                codec
                    .decode(&codec.encode(&x).expect("enc"))
                    .expect("dec")
                    .values
            );
        }
    }

    #[test]
    fn calibrated_codecs_without_matching_bases_are_invalid() {
        let device = bases(0);
        let cpca = Family::CentredPca(Precision::F32);
        let codec = cpca
            .build_with(3, device.shared(1, cpca).expect("held"))
            .expect("build");
        let payload = codec.encode(&act(5, 8)).expect("encode");
        let request = req(1, "cpca-r3", payload);
        invalid(
            check_request(&facts(), None, &request),
            "no bases are loaded",
        );
        // A server holding bases fitted on other activations refuses by fingerprint.
        let other = bases(5);
        invalid(check_request(&facts(), Some(&other), &request), "basis");
        let mut at_three = request.clone();
        at_three.split = 3;
        invalid(
            check_request(&facts(), Some(&device), &at_three),
            "cover splits [1, 2]",
        );
        let wsvd = req(1, "wsvd-r2", vec![0; 40]);
        invalid(
            check_request(&facts(), Some(&device), &wsvd),
            "hold no weight bases",
        );
    }
}
