//! OpenAI request parsing and replies written key by key in vLLM 0.32's order (see the fixtures;
//! serde_json's map would sort the keys).
//!
//! Prompt tokens are the prompt's UTF-8 bytes / 4, rounded up, at least 1. For chat the prompt is
//! the messages rendered as `<|role|>\n{content}\n` each, then `<|assistant|>\n` (a chat template
//! in spirit), so conversations sharing a system prompt share a prefix. A completions prompt that
//! is a list of token ids counts one token per id. Every generated token is the text `" tok"` —
//! four bytes, one token, so a client that appends a reply to its history grows it consistently.

use super::engine::Done;
use super::SimConfig;
use serde_json::{Map, Value};

pub(crate) const FINGERPRINT: &str = "vllm-0.32.0-sim";
pub(crate) const TOKEN_TEXT: &str = " tok";

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Completions,
    Chat,
}

/// An inference request the engine can run.
pub(crate) struct Parsed {
    /// The name the client asked for (echoed in replies).
    pub model: String,
    pub adapter: Option<usize>,
    pub prompt: Vec<u8>,
    pub prompt_len: u32,
    pub max_tokens: u32,
    pub stream: bool,
    pub include_usage: bool,
}

/// An error reply: status and vLLM's JSON body.
pub(crate) struct ApiError {
    pub status: u16,
    pub body: String,
}

pub(crate) fn error(status: u16, kind: &str, param: Option<&str>, message: &str) -> ApiError {
    let param = param.map_or("null".to_string(), js);
    ApiError {
        status,
        body: format!(
            "{{\"error\":{{\"message\":{},\"type\":{},\"param\":{param},\"code\":{status}}}}}",
            js(message),
            js(kind)
        ),
    }
}

pub(crate) fn bad_request(message: &str) -> ApiError {
    error(400, "BadRequestError", None, message)
}

pub(crate) fn parse(cfg: &SimConfig, api: Api, raw: &[u8]) -> Result<Parsed, ApiError> {
    let body: Map<String, Value> = match serde_json::from_slice(raw) {
        Ok(Value::Object(map)) => map,
        _ => return Err(bad_request("request body is not a JSON object")),
    };
    let model = match body.get("model") {
        None | Some(Value::Null) => cfg.base_model.clone(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad_request("`model` must be a string")),
    };
    let adapter = cfg.adapters.iter().position(|a| *a == model);
    if adapter.is_none() && model != cfg.base_model && cfg.strict_models {
        // vLLM's 404 lists the base model only (fixture error-unknown-model.json).
        return Err(error(
            404,
            "NotFoundError",
            Some("model"),
            &format!(
                "The model `{model}` does not exist. Valid aliases: {}.",
                cfg.base_model
            ),
        ));
    }
    let (prompt, prompt_len) = match api {
        Api::Completions => completion_prompt(&body)?,
        Api::Chat => chat_prompt(&body)?,
    };
    let keys: &[&str] = match api {
        Api::Completions => &["max_tokens"],
        Api::Chat => &["max_completion_tokens", "max_tokens"],
    };
    let max_tokens = match keys
        .iter()
        .find_map(|k| body.get(*k).filter(|v| !v.is_null()))
    {
        None => cfg.default_max_tokens,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => {
                return Err(bad_request(&format!(
                    "max_tokens must be at least 1, got {v}."
                )))
            }
        },
    };
    let total = u64::from(prompt_len) + u64::from(max_tokens);
    if total > cfg.max_model_len {
        let part = if api == Api::Chat {
            "messages"
        } else {
            "prompt"
        };
        return Err(bad_request(&format!(
            "This model's maximum context length is {} tokens. However, you requested {total} tokens ({prompt_len} in the {part}, {max_tokens} in the completion). Please reduce the length of the {part} or completion.",
            cfg.max_model_len
        )));
    }
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    Ok(Parsed {
        model,
        adapter,
        prompt,
        prompt_len,
        max_tokens,
        stream,
        include_usage,
    })
}

fn tokens_of(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4).max(1)).unwrap_or(u32::MAX)
}

fn completion_prompt(body: &Map<String, Value>) -> Result<(Vec<u8>, u32), ApiError> {
    match body.get("prompt") {
        Some(Value::String(s)) => Ok((s.as_bytes().to_vec(), tokens_of(s.len()))),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            // Token ids: four bytes each, so hashing sees the ids themselves.
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(Value::as_u64)
                .flat_map(|t| (t as u32).to_le_bytes())
                .collect();
            Ok((bytes, items.len() as u32))
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            let text: String = items.iter().filter_map(Value::as_str).collect();
            Ok((text.as_bytes().to_vec(), tokens_of(text.len())))
        }
        _ => Err(bad_request("`prompt` is required")),
    }
}

fn chat_prompt(body: &Map<String, Value>) -> Result<(Vec<u8>, u32), ApiError> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(bad_request("`messages` is required"));
    };
    let mut text = String::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        text.push_str("<|");
        text.push_str(role);
        text.push_str("|>\n");
        match m.get("content") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .for_each(|t| text.push_str(t)),
            _ => {}
        }
        text.push('\n');
    }
    text.push_str("<|assistant|>\n");
    let n = tokens_of(text.len());
    Ok((text.into_bytes(), n))
}

fn usage_full(d: &Done) -> String {
    format!(
        "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{},\"prompt_tokens_details\":null,\"completion_tokens_details\":null}}",
        d.prompt_tokens,
        d.prompt_tokens + d.completion_tokens,
        d.completion_tokens
    )
}

fn usage_short(d: &Done) -> String {
    format!(
        "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{}}}",
        d.prompt_tokens,
        d.prompt_tokens + d.completion_tokens,
        d.completion_tokens
    )
}

/// Identity of one reply: its id, creation time and echoed model name.
pub(crate) struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Head {
    pub(crate) fn new(api: Api, n: u64, model: &str) -> Head {
        let prefix = match api {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
        };
        Head {
            id: format!("{prefix}-{n:016x}"),
            created: super::metrics::unix_now() as u64,
            model: model.to_string(),
        }
    }

    fn start(&self, object: &str) -> String {
        format!(
            "{{\"id\":{},\"object\":\"{object}\",\"created\":{},\"model\":{}",
            js(&self.id),
            self.created,
            js(&self.model)
        )
    }
}

/// The whole (non-streaming) reply body.
pub(crate) fn whole(api: Api, head: &Head, d: &Done) -> String {
    let text = js(&TOKEN_TEXT.repeat(d.completion_tokens as usize));
    let usage = usage_full(d);
    match api {
        Api::Completions => format!(
            "{},\"choices\":[{{\"index\":0,\"text\":{text},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null,\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"routed_experts\":null}}],\"service_tier\":null,\"system_fingerprint\":\"{FINGERPRINT}\",\"usage\":{usage},\"kv_transfer_params\":null,\"ec_transfer_params\":null,\"metrics\":null}}",
            head.start("text_completion")
        ),
        Api::Chat => format!(
            "{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text},\"refusal\":null,\"annotations\":null,\"audio\":null,\"function_call\":null,\"reasoning\":null}},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null,\"routed_experts\":null}}],\"service_tier\":null,\"system_fingerprint\":\"{FINGERPRINT}\",\"usage\":{usage},\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"prompt_text\":null,\"kv_transfer_params\":null,\"ec_transfer_params\":null,\"metrics\":null}}",
            head.start("chat.completion")
        ),
    }
}

fn event(json: String) -> String {
    format!("data: {json}\n\n")
}

pub(crate) const DONE_EVENT: &str = "data: [DONE]\n\n";

/// The SSE events for one generated token (the chat role event comes before the first).
pub(crate) fn token_events(api: Api, head: &Head, first: bool, last: bool) -> String {
    let t = js(TOKEN_TEXT);
    match api {
        Api::Completions => {
            let tail = if last {
                format!("\"finish_reason\":\"length\",\"stop_reason\":null,\"prompt_token_ids\":null,\"token_ids\":null}}],\"system_fingerprint\":\"{FINGERPRINT}\"}}")
            } else {
                "\"finish_reason\":null,\"stop_reason\":null,\"prompt_token_ids\":null,\"token_ids\":null}]}".to_string()
            };
            event(format!(
                "{},\"choices\":[{{\"index\":0,\"text\":{t},\"logprobs\":null,{tail}",
                head.start("text_completion")
            ))
        }
        Api::Chat => {
            let start = head.start("chat.completion.chunk");
            let mut out = String::new();
            if first {
                out.push_str(&event(format!(
                    "{start},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}],\"prompt_token_ids\":null,\"prompt_text\":null}}"
                )));
            }
            let finish = if last {
                "\"finish_reason\":\"length\",\"stop_reason\":null"
            } else {
                "\"finish_reason\":null"
            };
            out.push_str(&event(format!(
                "{start},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{t}}},\"logprobs\":null,{finish},\"token_ids\":null}}]}}"
            )));
            out
        }
    }
}

/// The usage event of `stream_options.include_usage`.
pub(crate) fn usage_event(api: Api, head: &Head, d: &Done) -> String {
    let usage = usage_short(d);
    match api {
        Api::Completions => event(format!(
            "{},\"choices\":[],\"usage\":{usage}}}",
            head.start("text_completion")
        )),
        Api::Chat => event(format!(
            "{},\"choices\":[],\"usage\":{usage},\"system_fingerprint\":\"{FINGERPRINT}\"}}",
            head.start("chat.completion.chunk")
        )),
    }
}

/// `GET /v1/models`: the base model, then the adapters (fixture models.json).
pub(crate) fn models(cfg: &SimConfig, seq: &mut u64) -> String {
    let created = super::metrics::unix_now() as u64;
    let mut entry = |id: &str, parent: Option<&str>, max_len: Option<u64>| {
        *seq += 1;
        let perm = format!(
            "{{\"id\":\"modelperm-{:016x}\",\"object\":\"model_permission\",\"created\":{created},\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,\"is_blocking\":false}}",
            *seq
        );
        format!(
            "{{\"id\":{},\"object\":\"model\",\"created\":{created},\"owned_by\":\"vllm\",\"root\":{},\"parent\":{},\"max_model_len\":{},\"permission\":[{perm}]}}",
            js(id),
            js(&format!("/models/{id}")),
            parent.map_or("null".to_string(), js),
            max_len.map_or("null".to_string(), |n| n.to_string()),
        )
    };
    let mut data = vec![entry(&cfg.base_model, None, Some(cfg.max_model_len))];
    for a in &cfg.adapters {
        data.push(entry(a, Some(&cfg.base_model), None));
    }
    format!("{{\"object\":\"list\",\"data\":[{}]}}", data.join(","))
}
