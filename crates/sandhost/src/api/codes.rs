//! The codes of the calls that never reach a handler, made to say what `sandbox.proto`'s error table
//! says: tonic answers a request it cannot decode with `INTERNAL` and one over the size limit with
//! `OUT_OF_RANGE`, but our table keeps `INTERNAL` for runtime failures. A request that is not valid
//! protobuf is the client's fault: `INVALID_ARGUMENT`; one over the limit is `RESOURCE_EXHAUSTED`,
//! the gRPC convention for a message size limit.
//!
//! Both answers are trailers-only responses made before any handler runs, so their `grpc-status`
//! is a response header; this layer rewrites that header and nothing else. A handler's own status
//! is never touched: its messages do not start with tonic's.

use tonic::Code;
use tonic::codegen::http::{HeaderValue, Response};

/// What tonic's codec says of a request it cannot decode (prost's `DecodeError`).
const UNDECODABLE: &str = "failed to decode Protobuf message";
/// What tonic says of a request over the decoding limit.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The layer, for `Server::builder().layer(..)`.
pub(crate) fn layer<B>() -> tower::util::MapResponseLayer<fn(Response<B>) -> Response<B>> {
    tower::util::MapResponseLayer::new(fix::<B> as fn(Response<B>) -> Response<B>)
}

/// Rewrites the code of a response that tonic made for an undecodable or oversized request.
fn fix<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers();
    let (Some(code), Some(message)) = (headers.get("grpc-status"), headers.get("grpc-message")) else {
        return response;
    };
    // grpc-message is percent-encoded; the two prefixes differ from each other in their first word.
    let message = message.to_str().unwrap_or_default().replace("%20", " ");
    let fixed = match code.to_str().unwrap_or_default().parse::<i32>().map(Code::from) {
        Ok(Code::Internal) if message.starts_with(UNDECODABLE) => Code::InvalidArgument,
        Ok(Code::OutOfRange) if message.starts_with(TOO_LARGE) => Code::ResourceExhausted,
        _ => return response,
    };
    response.headers_mut().insert("grpc-status", HeaderValue::from(fixed as i32));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: Code, message: &str) -> Response<()> {
        let status = tonic::Status::new(code, message);
        let mut response = Response::new(());
        status.add_header(response.headers_mut()).expect("headers");
        response
    }

    fn code_of(response: &Response<()>) -> Code {
        let header = response.headers().get("grpc-status").expect("grpc-status");
        Code::from(header.to_str().expect("ascii").parse::<i32>().expect("a number"))
    }

    #[test]
    fn tonic_s_codes_for_requests_it_cannot_take_become_the_documented_ones() {
        let undecodable = answer(Code::Internal, "failed to decode Protobuf message: invalid wire type");
        assert_eq!(code_of(&fix(undecodable)), Code::InvalidArgument);
        let large = answer(Code::OutOfRange, "Error, decoded message length too large: found 9 bytes");
        assert_eq!(code_of(&fix(large)), Code::ResourceExhausted);
    }

    #[test]
    fn every_other_answer_is_left_as_it_is() {
        for (code, message) in [
            (Code::Internal, "sandbox a: pause failed (error id 12)"),
            (Code::OutOfRange, "something else"),
            (Code::InvalidArgument, "failed to decode Protobuf message"),
            (Code::Ok, ""),
        ] {
            assert_eq!(code_of(&fix(answer(code, message))), code, "{code:?} {message}");
        }
        assert!(fix(Response::new(())).headers().is_empty(), "no status: nothing added");
    }
}
