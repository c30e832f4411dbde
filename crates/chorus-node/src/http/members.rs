//! `POST /v1/members`: a membership change through the running node, so the admin need not
//! stop its node to add or remove a member (`chorus member add|remove|vote-remove|vote-restore`
//! uses it when a node runs on the data directory).
//!
//! Body `{"op": OP, "key": "<64 hex digits>", "role": "writer" | "anchor"}` (`role` only for
//! `add`):
//! * `add`, `remove`: the node appends a `member` event signed with its own key; the timeline
//!   takes it only from the genesis admin, so on any other node the answer is the timeline's
//!   refusal (422, `member events must be signed by the admin`).
//! * `vote-remove`, `vote-restore` (`final/1` timelines only, 400 otherwise): the node appends
//!   a `vote` event, its member's vote to take `key` off the finality committee or put it
//!   back; a quorum of the committee's votes carries it once they are final (docs/design/
//!   finality.md, "Membership changes"). Any member may vote; votes of non-members of the
//!   committee count for nothing.
//!
//! Reply: `{"id": CID}` once the event is durable.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chorus_core::{
    AuthorId,
    event::kind,
    membership::{MemberOp, Role, VoteOp},
};
use serde::Deserialize;
use serde_json::json;

use super::shared::{Api, error, json_body, write_error};

/// A membership change through the running node (the admin's), or a committee vote.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// `add`, `remove`, or a committee vote: `vote-remove`, `vote-restore`.
    op: String,
    /// The member's public key, hex.
    key: String,
    /// `writer` or `anchor` (for `add` only).
    role: Option<String>,
}

/// What a request asks for: an admin's membership change or a committee vote.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Member(MemberOp),
    Vote(VoteOp),
}

impl Change {
    fn event(&self) -> (String, ipld_core::ipld::Ipld) {
        match self {
            Change::Member(op) => (kind::MEMBER.into(), op.to_body()),
            Change::Vote(v) => (kind::VOTE.into(), v.to_body()),
        }
    }
}

/// The change a request asks for, or why it is not one.
fn parse(r: &MemberRequest) -> Result<Change, String> {
    let key: AuthorId = r.key.parse().map_err(|e| format!("key {:?}: {e}", r.key))?;
    match (r.op.as_str(), r.role.as_deref()) {
        ("add", Some("writer")) => Ok(Change::Member(MemberOp::Add(key, Role::Writer))),
        ("add", Some("anchor")) => Ok(Change::Member(MemberOp::Add(key, Role::Anchor))),
        ("add", other) => Err(format!(
            "role must be \"writer\" or \"anchor\" for op \"add\" (got {other:?})"
        )),
        ("remove", None) => Ok(Change::Member(MemberOp::Remove(key))),
        ("vote-remove", None) => Ok(Change::Vote(VoteOp::Remove(key))),
        ("vote-restore", None) => Ok(Change::Vote(VoteOp::Restore(key))),
        (op @ ("remove" | "vote-remove" | "vote-restore"), Some(_)) => {
            Err(format!("op {op:?} takes no role"))
        }
        (op, _) => Err(format!(
            "op must be \"add\", \"remove\", \"vote-remove\" or \"vote-restore\" (got {op:?})"
        )),
    }
}

#[utoipa::path(post, path = "/v1/members", tag = "timeline", request_body = MemberRequest, security(("token" = [])), responses(
    (status = 200, description = "`{\"id\": CID}` of the membership event, once durable", body = serde_json::Value),
    (status = 400, description = "A malformed request (the message says which field)", body = super::shared::ApiError),
    (status = 401, description = "The node has a token and the request does not carry it", body = super::shared::ApiError),
    (status = 403, description = "This node's key may not make the change (not the admin)", body = super::shared::ApiError),
))]
pub async fn change(
    State(api): State<Api>,
    body: Result<Json<MemberRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let r = match json_body(body) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let change = match parse(&r) {
        Ok(c) => c,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if matches!(change, Change::Vote(_)) && !api.final_order {
        return error(
            StatusCode::BAD_REQUEST,
            "committee votes need a final/1 or final/2 timeline (this one orders by lc-cid/1, where only \
             the admin changes membership)"
                .to_string(),
        );
    }
    match api.node.append(vec![change.event()]).await {
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
        let k = AuthorId([7; 32]);
        assert_eq!(
            parse(&req("add", Some("writer"))),
            Ok(Change::Member(MemberOp::Add(k, Role::Writer)))
        );
        assert_eq!(
            parse(&req("remove", None)),
            Ok(Change::Member(MemberOp::Remove(k)))
        );
        assert_eq!(
            parse(&req("vote-remove", None)),
            Ok(Change::Vote(VoteOp::Remove(k)))
        );
        assert_eq!(
            parse(&req("vote-restore", None)),
            Ok(Change::Vote(VoteOp::Restore(k)))
        );
        assert!(parse(&req("vote-remove", Some("writer"))).is_err());
        assert!(parse(&req("add", None)).unwrap_err().contains("role"));
        assert!(parse(&req("remove", Some("writer"))).is_err());
        assert!(parse(&req("promote", None)).unwrap_err().contains("op"));
        let mut bad = req("add", Some("writer"));
        bad.key = "zz".into();
        assert!(parse(&bad).unwrap_err().contains("key"));
    }
}
