//! Endpoint discovery from Envoy itself: the members of a cluster Envoy already knows (EDS from
//! Istio or Envoy Gateway, DNS, static), read from the admin endpoint `/clusters?format=json`.
//! So mesh users point a pool at a cluster instead of listing pod IPs.

use serde_json::Value;

/// The `ip:port` of every usable host of `cluster` in an admin `/clusters?format=json` answer.
/// Hosts Envoy marks unhealthy, draining or failing health checks are left out. `port` replaces
/// the hosts' port (a pool served on another port than the cluster's). Sorted, so the same
/// membership always gives the same list.
pub fn members_from_admin(
    json: &[u8],
    cluster: &str,
    port: Option<u16>,
) -> Result<Vec<String>, String> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let statuses = doc
        .get("cluster_statuses")
        .and_then(Value::as_array)
        .ok_or("no cluster_statuses")?;
    let status = statuses
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(cluster))
        .ok_or_else(|| format!("Envoy has no cluster \"{cluster}\""))?;
    let hosts = status
        .get("host_statuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        if !usable(h) {
            continue;
        }
        let Some(sock) = h.pointer("/address/socket_address") else {
            continue;
        };
        let Some(ip) = sock.get("address").and_then(Value::as_str) else {
            continue;
        };
        let Some(p) = port.or_else(|| {
            sock.get("port_value")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        let Ok(addr) = format!("{}:{p}", bracket(ip)).parse::<std::net::SocketAddr>() else {
            continue;
        };
        out.push(addr.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn usable(host: &Value) -> bool {
    let Some(h) = host.get("health_status") else {
        return true;
    };
    let flag = |k: &str| h.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("failed_active_health_check")
        || flag("failed_outlier_check")
        || flag("pending_dynamic_removal")
    {
        return false;
    }
    !matches!(
        h.get("eds_health_status").and_then(Value::as_str),
        Some("UNHEALTHY" | "DRAINING" | "TIMEOUT")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const ADMIN: &str = r#"{"cluster_statuses":[
      {"name":"other","host_statuses":[{"address":{"socket_address":{"address":"10.9.9.9","port_value":1}}}]},
      {"name":"vllm","host_statuses":[
        {"address":{"socket_address":{"address":"10.0.0.12","port_value":8000}},"health_status":{"eds_health_status":"HEALTHY"}},
        {"address":{"socket_address":{"address":"10.0.0.11","port_value":8000}},"health_status":{"eds_health_status":"HEALTHY"}},
        {"address":{"socket_address":{"address":"10.0.0.13","port_value":8000}},"health_status":{"eds_health_status":"DRAINING"}},
        {"address":{"socket_address":{"address":"10.0.0.14","port_value":8000}},"health_status":{"failed_active_health_check":true}},
        {"address":{"socket_address":{"address":"::1","port_value":8000}}},
        {"address":{"pipe":{"path":"/tmp/x"}}}
      ]}]}"#;

    #[test]
    fn usable_members_of_the_named_cluster_sorted() {
        let m = members_from_admin(ADMIN.as_bytes(), "vllm", None).unwrap();
        assert_eq!(m, ["10.0.0.11:8000", "10.0.0.12:8000", "[::1]:8000"]);
        let m = members_from_admin(ADMIN.as_bytes(), "vllm", Some(9000)).unwrap();
        assert_eq!(m[0], "10.0.0.11:9000");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(members_from_admin(b"nope", "vllm", None)
            .unwrap_err()
            .contains("JSON"));
        assert!(members_from_admin(ADMIN.as_bytes(), "x", None)
            .unwrap_err()
            .contains("\"x\""));
        assert_eq!(
            members_from_admin(br#"{"cluster_statuses":[{"name":"x"}]}"#, "x", None).unwrap(),
            Vec::<String>::new()
        );
    }
}
