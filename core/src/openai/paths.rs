//! Which inference API a request targets.

/// The OpenAI-style APIs whose bodies carry a `model` the router acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InferenceApi {
    Completions,
    ChatCompletions,
    Embeddings,
    Responses,
}

impl InferenceApi {
    /// The canonical request path, for logs.
    pub fn path(self) -> &'static str {
        match self {
            InferenceApi::Completions => "/v1/completions",
            InferenceApi::ChatCompletions => "/v1/chat/completions",
            InferenceApi::Embeddings => "/v1/embeddings",
            InferenceApi::Responses => "/v1/responses",
        }
    }
}

/// Which inference API a request is for, or None (pass through untouched).
/// POST only (methods are case-sensitive); the query string is ignored; one trailing slash is accepted.
pub fn inference_api(method: &str, path: &str) -> Option<InferenceApi> {
    if method != "POST" {
        return None;
    }
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/v1/completions" => Some(InferenceApi::Completions),
        "/v1/chat/completions" => Some(InferenceApi::ChatCompletions),
        "/v1/embeddings" => Some(InferenceApi::Embeddings),
        "/v1/responses" => Some(InferenceApi::Responses),
        _ => None,
    }
}

/// `GET /v1/models` (query ignored, one trailing slash accepted): the list the gateway answers.
pub fn is_models_list(method: &str, path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    method == "GET" && path.strip_suffix('/').unwrap_or(path) == "/v1/models"
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn exact_paths() {
        assert_eq!(
            inference_api("POST", "/v1/completions"),
            Some(InferenceApi::Completions)
        );
        assert_eq!(
            inference_api("POST", "/v1/chat/completions"),
            Some(InferenceApi::ChatCompletions)
        );
        assert_eq!(
            inference_api("POST", "/v1/embeddings"),
            Some(InferenceApi::Embeddings)
        );
        assert_eq!(
            inference_api("POST", "/v1/responses"),
            Some(InferenceApi::Responses)
        );
        for api in [
            InferenceApi::Completions,
            InferenceApi::ChatCompletions,
            InferenceApi::Embeddings,
            InferenceApi::Responses,
        ] {
            assert_eq!(inference_api("POST", api.path()), Some(api));
        }
    }

    #[test]
    fn query_and_trailing_slash() {
        assert_eq!(
            inference_api("POST", "/v1/chat/completions?x=y"),
            Some(InferenceApi::ChatCompletions)
        );
        assert_eq!(
            inference_api("POST", "/v1/chat/completions/"),
            Some(InferenceApi::ChatCompletions)
        );
        assert_eq!(
            inference_api("POST", "/v1/chat/completions/?a=1&b=/"),
            Some(InferenceApi::ChatCompletions)
        );
        assert_eq!(
            inference_api("POST", "/v1/completions?"),
            Some(InferenceApi::Completions)
        );
    }

    #[test]
    fn other_requests_pass_through() {
        assert_eq!(inference_api("GET", "/v1/completions"), None);
        assert_eq!(inference_api("post", "/v1/completions"), None);
        assert_eq!(inference_api("PUT", "/v1/chat/completions"), None);
        for path in [
            "",
            "/",
            "/v1/models",
            "/v1/completions//",
            "/v1/completionsx",
            "/v1/chat/completions/extra",
            "/V1/completions",
            "v1/completions",
            "/v2/completions",
            "/v1//completions",
            "?/v1/completions",
            "/metrics",
        ] {
            assert_eq!(inference_api("POST", path), None, "{path:?}");
        }
    }

    #[test]
    fn the_models_list() {
        assert!(is_models_list("GET", "/v1/models"));
        assert!(is_models_list("GET", "/v1/models/?x=1"));
        assert!(!is_models_list("POST", "/v1/models"));
        assert!(!is_models_list("GET", "/v1/models/tiny-llama"));
    }
}
