//! OpenAI-style request bodies: which API a request is for, a single-pass scan of the body for the fields the
//! router needs, the byte-exact `model` rewrite, and the OpenAI error shape for replies the filter sends itself.

pub mod errors;
mod json_stream;
mod models;
mod paths;
mod response_tap;
mod rewrite;
mod scan;
mod sse;
mod stream_usage;
mod usage;

pub use errors::error_body;
pub use models::models_list;
pub use paths::{inference_api, is_models_list, InferenceApi};
pub use response_tap::{ResponseTap, TapStep};
pub use rewrite::{
    encode_json_string, model_prefix_replacement, plan_body_edit, rewrite_model, BodyEdit,
};
pub use scan::{scan_request, BodyError, JsonKind, RequestFields, UsageSpans, ValueAt, MAX_DEPTH};
pub use sse::{SseParser, SseProgress};
pub use stream_usage::{
    request_usage_rewrite, request_usage_splice, UsageStripper, DEFAULT_HOLD_LIMIT,
};
pub use usage::{Usage, UsageScanner};
