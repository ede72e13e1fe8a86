//! The subject, stream and consumer names (see the [module docs](super)).

use super::NatsError;

/// The longest model or device id used as a subject token.
pub const MAX_TOKEN: usize = 64;

/// Checks that `id` can be one subject token and a stream or consumer name: 1 to
/// [`MAX_TOKEN`] ASCII letters, digits, `-` and `_` (no `.`, `*`, `>` or spaces, which would
/// let an id span or match other subjects).
///
/// # Errors
/// [`NatsError::Config`] naming `what`.
pub fn check_token(what: &str, id: &str) -> Result<(), NatsError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_TOKEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NatsError::Config(format!(
            "{what} {id:?}: 1 to {MAX_TOKEN} ASCII letters, digits, '-' or '_'"
        )))
    }
}

/// The names under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Names under `prefix` (one token).
    ///
    /// # Errors
    /// A prefix that is not one token.
    pub fn new(prefix: &str) -> Result<Self, NatsError> {
        check_token("prefix", prefix)?;
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// `<prefix>.req.<model>.<device>`: where `device` publishes its requests.
    pub fn request(&self, model: &str, device: &str) -> String {
        format!("{}.req.{model}.{device}", self.prefix)
    }

    /// `<prefix>.req.<model>.*`: every device's requests for `model`.
    pub fn requests(&self, model: &str) -> String {
        format!("{}.req.{model}.*", self.prefix)
    }

    /// The device of a request subject of `model`, if the subject is one.
    pub fn device_of_request<'a>(&self, model: &str, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".req.")?
            .strip_prefix(model)?
            .strip_prefix('.')?;
        check_token("device", rest).ok().map(|()| rest)
    }

    /// `<prefix>-req-<model>`: the requests stream of `model`.
    pub fn request_stream(&self, model: &str) -> String {
        format!("{}-req-{model}", self.prefix)
    }

    /// The workers' shared durable consumer on the requests stream.
    pub fn workers(&self) -> &'static str {
        "workers"
    }

    /// `<prefix>.reply.<device>`: the answers to `device`.
    pub fn reply(&self, device: &str) -> String {
        format!("{}.reply.{device}", self.prefix)
    }

    /// `<prefix>-replies`: the answers stream (the consumer of a device is named by it).
    pub fn reply_stream(&self) -> String {
        format!("{}-replies", self.prefix)
    }

    /// `<prefix>.hello.<model>.<device>`.
    pub fn hello(&self, model: &str, device: &str) -> String {
        format!("{}.hello.{model}.{device}", self.prefix)
    }

    /// `<prefix>.hello.<model>.*`.
    pub fn hellos(&self, model: &str) -> String {
        format!("{}.hello.{model}.*", self.prefix)
    }

    /// `<prefix>.ping.<model>.<device>`.
    pub fn ping(&self, model: &str, device: &str) -> String {
        format!("{}.ping.{model}.{device}", self.prefix)
    }

    /// `<prefix>.ping.<model>.*`.
    pub fn pings(&self, model: &str) -> String {
        format!("{}.ping.{model}.*", self.prefix)
    }

    /// The last token of a hello or ping subject, if it is a device id.
    pub fn last_device<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let last = subject.rsplit('.').next()?;
        check_token("device", last).ok().map(|()| last)
    }

    /// `_INBOX.<device>`: the device's reply inboxes (its credentials read only these).
    pub fn inbox(&self, device: &str) -> String {
        format!("_INBOX.{device}")
    }

    /// The message id of request `id` of `device`'s client `instance`: the de-duplication
    /// key of both the request and its answer.
    pub fn message_id(&self, device: &str, instance: u64, id: u64) -> String {
        format!("{device}.{instance}.{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_could_span_or_match_subjects_are_refused() {
        for bad in ["", "a.b", "a*", ">", "a b", "ü", &"x".repeat(MAX_TOKEN + 1)] {
            assert!(check_token("device", bad).is_err(), "{bad:?}");
        }
        for good in ["device-0", "dev_1", "A", &"x".repeat(MAX_TOKEN)] {
            assert!(check_token("device", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn the_device_of_a_request_is_its_subjects_last_token() {
        let s = Subjects::new("collab").expect("prefix");
        let subject = s.request("deit-tiny", "dev-a");
        assert_eq!(subject, "collab.req.deit-tiny.dev-a");
        assert_eq!(s.device_of_request("deit-tiny", &subject), Some("dev-a"));
        assert_eq!(s.device_of_request("other", &subject), None);
        assert_eq!(
            s.device_of_request("deit-tiny", "collab.req.deit-tiny.a.b"),
            None
        );
        assert_eq!(s.device_of_request("deit-tiny", "collab.reply.dev-a"), None);
        assert_eq!(s.last_device(&s.hello("m", "dev-b")), Some("dev-b"));
        assert!(Subjects::new("a.b").is_err());
    }
}
