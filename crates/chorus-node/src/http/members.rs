//! `POST /v1/members`: a membership change through the running node, so the admin need not
//! stop its node to add or remove a member (`chorus member add|remove` uses it when a node
//! runs on the data directory).
//!
//! Body `{"op": "add" | "remove", "key": "<64 hex digits>", "role": "writer" | "anchor"}`
//! (`role` only for `add`). The node appends a `member` event signed with its own key; the
//! timeline takes it only from the genesis admin, so on any other node the answer is the
//! timeline's refusal (422, `member events must be signed by the admin`). Reply: `{"id": CID}`
//! once the event is durable.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chorus_core::{
    AuthorId,
    event::kind,
    membership::{MemberOp, Role},
};
use serde::Deserialize;
use serde_json::json;

use super::shared::{Api, error, json_body, write_error};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    op: String,
    key: String,
    role: Option<String>,
}

/// The operation a request asks for, or why it is not one.
fn parse(r: &MemberRequest) -> Result<MemberOp, String> {
    let key: AuthorId = r.key.parse().map_err(|e| format!("key {:?}: {e}", r.key))?;
    match (r.op.as_str(), r.role.as_deref()) {
        ("add", Some("writer")) => Ok(MemberOp::Add(key, Role::Writer)),
        ("add", Some("anchor")) => Ok(MemberOp::Add(key, Role::Anchor)),
        ("add", other) => Err(format!(
            "role must be \"writer\" or \"anchor\" for op \"add\" (got {other:?})"
        )),
        ("remove", None) => Ok(MemberOp::Remove(key)),
        ("remove", Some(_)) => Err("op \"remove\" takes no role".into()),
        (op, _) => Err(format!("op must be \"add\" or \"remove\" (got {op:?})")),
    }
}

pub async fn change(
    State(api): State<Api>,
    body: Result<Json<MemberRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let r = match json_body(body) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let op = match parse(&r) {
        Ok(op) => op,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match api
        .node
        .append(vec![(kind::MEMBER.into(), op.to_body())])
        .await
    {
        Ok(Ok(ids)) => Json(json!({ "id": ids[0].to_string() })).into_response(),
        Ok(Err(e)) => write_error(e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: &str, role: Option<&str>) -> MemberRequest {
        MemberRequest {
            op: op.into(),
            key: AuthorId([7; 32]).to_string(),
            role: role.map(str::to_string),
        }
    }

    #[test]
    fn requests_parse_to_the_operation_they_name_or_say_why_not() {
        assert_eq!(
            parse(&req("add", Some("writer"))),
            Ok(MemberOp::Add(AuthorId([7; 32]), Role::Writer))
        );
        assert_eq!(
            parse(&req("remove", None)),
            Ok(MemberOp::Remove(AuthorId([7; 32])))
        );
        assert!(parse(&req("add", None)).unwrap_err().contains("role"));
        assert!(parse(&req("remove", Some("writer"))).is_err());
        assert!(parse(&req("promote", None)).unwrap_err().contains("op"));
        let mut bad = req("add", Some("writer"));
        bad.key = "zz".into();
        assert!(parse(&bad).unwrap_err().contains("key"));
    }
}
