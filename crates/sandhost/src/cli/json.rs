//! `--json`: the reply of the RPC a subcommand makes, in the proto3 JSON mapping, as grpcurl prints
//! it: lowerCamelCase field names, enums by name, `Timestamp`s as RFC 3339 strings, `Duration`s as
//! `"1.5s"`, 64-bit integers as strings, bytes as base64, fields at their default value left out.
//!
//! The mapping is prost-reflect's (its `serde` feature), over the descriptors sandhost-proto compiles
//! ([`sandhost_proto::FILE_DESCRIPTOR_SET`], the same the server's reflection serves), so it follows
//! the proto without a hand-written field list to keep in step. Fields come out in field-number
//! order, map entries (labels) sorted by key, so the same reply always prints the same text.

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use sandhost_proto::v1 as pb;
use serde::ser::{Serialize, SerializeMap as _, SerializeSeq as _, Serializer};
use serde_json::Value;

/// A reply message the CLI prints, and its full proto name.
pub(crate) trait Reply: prost::Message {
    /// `sandhost.v1.<Message>`.
    const NAME: &'static str;
}

macro_rules! replies {
    ($($message:ident),+ $(,)?) => {
        $(impl Reply for pb::$message {
            const NAME: &'static str = concat!("sandhost.v1.", stringify!($message));
        })+
        /// Every reply type, for the test that each resolves in the descriptors.
        #[cfg(test)]
        const ALL_REPLIES: &[&str] = &[$(<pb::$message as Reply>::NAME),+];
    };
}

replies!(
    CreateResponse,
    GetResponse,
    ListResponse,
    DeleteResponse,
    PauseResponse,
    ResumeResponse,
    UpdateResponse,
    CheckpointResponse,
    ListSnapshotsResponse,
    DeleteSnapshotResponse,
    LogsResponse,
    WaitResponse,
    GetInfoResponse,
    DrainResponse,
    UndrainResponse,
    ForceStopResponse,
    WatchDrainResponse,
);

/// Why a reply could not be turned into JSON (none of these should happen with a sound build).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsonError {
    /// The embedded descriptor set does not decode.
    #[error("the API's embedded descriptors cannot be read")]
    Descriptors(#[source] prost_reflect::DescriptorError),
    /// The descriptors have no such message.
    #[error("the API's descriptors have no message {0}")]
    UnknownMessage(&'static str),
    /// The message does not decode against its descriptor.
    #[error("{name} does not match its descriptor")]
    Decode {
        /// The message.
        name: &'static str,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// The mapping refused a value (a timestamp out of range, say).
    #[error("{name} has no JSON form")]
    Serialize {
        /// The message.
        name: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Renders replies as JSON; holds the decoded descriptors.
#[derive(Debug)]
pub(crate) struct JsonPrinter {
    pool: DescriptorPool,
}

impl JsonPrinter {
    /// Decodes the API's descriptors.
    pub(crate) fn new() -> Result<Self, JsonError> {
        let pool =
            DescriptorPool::decode(sandhost_proto::FILE_DESCRIPTOR_SET).map_err(JsonError::Descriptors)?;
        Ok(Self { pool })
    }

    /// The reply as one pretty-printed JSON document (two-space indent, as grpcurl prints).
    pub(crate) fn pretty<M: Reply>(&self, reply: &M) -> Result<String, JsonError> {
        let value = self.ordered(reply)?;
        serde_json::to_string_pretty(&value).map_err(|source| JsonError::Serialize { name: M::NAME, source })
    }

    /// The reply on one line (for streams: one document per line).
    pub(crate) fn line<M: Reply>(&self, reply: &M) -> Result<String, JsonError> {
        let value = self.ordered(reply)?;
        serde_json::to_string(&value).map_err(|source| JsonError::Serialize { name: M::NAME, source })
    }

    fn ordered<M: Reply>(&self, reply: &M) -> Result<Ordered, JsonError> {
        let descriptor = self.pool.get_message_by_name(M::NAME).ok_or(JsonError::UnknownMessage(M::NAME))?;
        let message = DynamicMessage::decode(descriptor.clone(), reply.encode_to_vec().as_slice())
            .map_err(|source| JsonError::Decode { name: M::NAME, source })?;
        // The defaults are the proto3 mapping's: 64-bit integers as strings, enums by name,
        // lowerCamelCase names, default values left out.
        let value = message
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .map_err(|source| JsonError::Serialize { name: M::NAME, source })?;
        Ok(Ordered::message(value, &descriptor))
    }
}

/// A JSON value whose objects keep an order: fields by number, map entries by key.
#[derive(Debug)]
enum Ordered {
    Object(Vec<(String, Ordered)>),
    Array(Vec<Ordered>),
    Leaf(Value),
}

impl Ordered {
    /// A message: its fields in field-number order. A well-known type that maps to a string
    /// (`Timestamp`, `Duration`) is a leaf.
    fn message(value: Value, descriptor: &MessageDescriptor) -> Self {
        let Value::Object(mut object) = value else { return Self::Leaf(value) };
        let mut fields = Vec::with_capacity(object.len());
        for field in descriptor.fields() {
            if let Some(value) = object.remove(field.json_name()) {
                fields.push((field.json_name().to_owned(), Self::field(value, &field)));
            }
        }
        // Nothing should be left; keep whatever is rather than drop it.
        fields.extend(object.into_iter().map(|(name, value)| (name, Self::Leaf(value))));
        Self::Object(fields)
    }

    fn field(value: Value, field: &FieldDescriptor) -> Self {
        match (value, field.kind()) {
            (Value::Object(entries), Kind::Message(entry)) if field.is_map() => {
                let value_kind = entry.map_entry_value_field().kind();
                let mut entries: Vec<_> = entries
                    .into_iter()
                    .map(|(key, value)| (key, Self::of_kind(value, &value_kind)))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Self::Object(entries)
            }
            (Value::Array(items), kind) if field.is_list() => {
                Self::Array(items.into_iter().map(|item| Self::of_kind(item, &kind)).collect())
            }
            (value, kind) => Self::of_kind(value, &kind),
        }
    }

    fn of_kind(value: Value, kind: &Kind) -> Self {
        match kind {
            Kind::Message(descriptor) => Self::message(value, descriptor),
            _ => Self::Leaf(value),
        }
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (name, value) in fields {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
            Self::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Leaf(value) => value.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn printer() -> JsonPrinter {
        JsonPrinter::new().expect("the embedded descriptors decode")
    }

    #[test]
    fn every_reply_resolves_in_the_descriptors() {
        let printer = printer();
        for name in ALL_REPLIES {
            assert!(printer.pool.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_sandbox_in_the_proto3_mapping() {
        let reply = pb::GetResponse {
            sandbox: Some(pb::Sandbox {
                id: "sb-1".into(),
                lifecycle_id: "lc".into(),
                state: pb::SandboxState::Exited.into(),
                argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
                resources: Some(pb::Resources { memory_bytes: Some(256 << 20), ..Default::default() }),
                labels: BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
                created_at: Some(prost_types::Timestamp { seconds: 0, nanos: 500_000_000 }),
                exit: Some(pb::SandboxExit {
                    status: Some(pb::sandbox_exit::Status::Code(3)),
                    reason: pb::ExitReason::Exited.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let text = printer().pretty(&reply).expect("renders");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        let sandbox = &value["sandbox"];
        assert_eq!(sandbox["id"], "sb-1");
        assert_eq!(sandbox["lifecycleId"], "lc", "lowerCamelCase");
        assert_eq!(sandbox["state"], "SANDBOX_STATE_EXITED", "enums by name");
        assert_eq!(sandbox["resources"]["memoryBytes"], "268435456", "uint64 as a string");
        assert_eq!(sandbox["createdAt"], "1970-01-01T00:00:00.500Z", "RFC 3339");
        assert_eq!(sandbox["exit"]["code"], 3, "int32 as a number");
        assert_eq!(sandbox["exit"]["reason"], "EXIT_REASON_EXITED");
        for absent in ["template", "drainPolicy", "endTime", "restoredFrom"] {
            assert!(sandbox.get(absent).is_none(), "{absent}: defaults are left out: {text}");
        }
        assert!(sandbox["exit"].get("message").is_none(), "{text}");
        // Field-number order, map keys sorted, two-space indent.
        let order: Vec<_> =
            ["\"id\"", "\"lifecycleId\"", "\"state\"", "\"argv\"", "\"labels\"", "\"createdAt\""]
                .iter()
                .map(|key| text.find(key).unwrap_or_else(|| panic!("{key} in {text}")))
                .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.find("\"a\": \"1\"") < text.find("\"b\": \"2\""), "{text}");
        assert!(text.starts_with("{\n  \"sandbox\": {\n    \"id\""), "{text}");
    }

    #[test]
    fn counts_zeroes_timestamps_and_bytes() {
        let printer = printer();
        let progress = pb::DrainProgress {
            status: pb::NodeStatus::Drained.into(),
            live: 0,
            force_stopped: 2,
            deadline: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ..Default::default()
        };
        let text = printer.line(&pb::WatchDrainResponse { progress: Some(progress) }).expect("renders");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["progress"]["status"], "NODE_STATUS_DRAINED");
        assert_eq!(value["progress"]["forceStopped"], "2");
        assert!(value["progress"].get("live").is_none(), "0 is a default: {text}");
        assert_eq!(value["progress"]["deadline"], "2023-11-14T22:13:20Z");
        assert!(!text.contains('\n'), "one line: {text}");

        let logs =
            printer.line(&pb::LogsResponse { data: b"hi\n".to_vec(), dropped_bytes: 0 }).expect("renders");
        assert_eq!(logs, r#"{"data":"aGkK"}"#);
        assert_eq!(printer.pretty(&pb::DeleteSnapshotResponse {}).expect("renders"), "{}");
    }
}
