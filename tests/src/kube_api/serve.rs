//! The stand-in's HTTP side: the API server's URL layout, verbs and JSON shapes — lists with
//! `limit`/`continue`, watch streams (JSON lines) with bookmarks and `410 Gone`, the status
//! subresource, optimistic concurrency — over TLS with a bearer token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{self, Event, EventType, Refusal, Resource};

type Body = http_body_util::Either<Full<Bytes>, Channel<Bytes, Infallible>>;

/// Serves one request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let bearer = format!("Bearer {}", shared.token);
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == bearer.as_bytes());
    if !authorized {
        return Ok(refusal(&Refusal {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
        }));
    }
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or(""));
    if path == "/version" {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-rampart-standin"}),
        ));
    }
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" && request.method() == Method::POST {
        let body = match request.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        shared.count("tokenreviews", "create");
        return Ok(token_review(&shared, &body));
    }
    let Some(target) = Target::parse(&path) else {
        return Ok(refusal(&Refusal {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
        }));
    };
    let method = request.method().clone();
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, &target.name, watch) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, None, _) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), _) => "delete",
        _ => {
            return Ok(refusal(&Refusal {
                code: 405,
                reason: "MethodNotAllowed",
                message: format!("{method} {path}"),
            }));
        }
    };
    shared.count(target.resource.plural, verb);
    let result = match verb {
        "watch" => return Ok(watch_stream(shared, &target, &query)),
        "list" => list(&shared, &target, &query),
        "get" => get(&shared, &target),
        _ => write(&shared, &target, verb, &content_type, &body),
    };
    Ok(match result {
        Ok((status, value)) => json_response(status, &value),
        Err(r) => refusal(&r),
    })
}

/// What a URL names: `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]` or the same under
/// `/apis/GROUP/VERSION`.
#[derive(Debug)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, rest @ ..]
                if store::resource_at(group, version, plural).is_some_and(|r| r.namespaced) =>
            {
                (Some((*ns).to_owned()), {
                    let mut v = vec![*plural];
                    v.extend_from_slice(rest);
                    v
                })
            }
            _ => (None, rest.to_vec()),
        };
        let resource = store::resource_at(group, version, rest.first()?)?;
        let (name, status) = match rest.as_slice() {
            [_] => (None, false),
            [_, name] => (Some((*name).to_owned()), false),
            [_, name, "status"] => (Some((*name).to_owned()), true),
            _ => return None,
        };
        Some(Target {
            resource,
            namespace,
            name,
            status,
        })
    }

    fn key(&self, name: &str) -> store::Key {
        (
            self.resource,
            self.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        )
    }
}

fn selectors(query: &BTreeMap<String, String>) -> Result<(LabelSelector, FieldSelector), Refusal> {
    let bad = |message: String| Refusal {
        code: 400,
        reason: "BadRequest",
        message,
    };
    let labels =
        LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str)).map_err(bad)?;
    let fields =
        FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str)).map_err(bad)?;
    Ok((labels, fields))
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> Result<(StatusCode, Value), Refusal> {
    let (labels, fields) = selectors(query)?;
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let store = shared.lock_store();
    // A continue token names the list's revision and the last key served.
    let (revision, after) = match query.get("continue") {
        Some(token) => {
            let mut parts = token.splitn(3, ':');
            let (Some(rev), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(Refusal {
                    code: 400,
                    reason: "BadRequest",
                    message: "invalid continue token".into(),
                });
            };
            let rev: u64 = rev.parse().unwrap_or(0);
            if store.events_since(rev).is_none() {
                return Err(Refusal {
                    code: 410,
                    reason: "Expired",
                    message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                });
            }
            (rev, Some((ns.to_owned(), name.to_owned())))
        }
        None => (store.revision(), None),
    };
    let mut items = Vec::new();
    let mut next = None;
    let mut last: Option<&store::Key> = None;
    for (key, object) in store.list(target.resource, target.namespace.as_deref(), after.as_ref()) {
        if !(labels.matches(object) && fields.matches(object)) {
            continue;
        }
        if items.len() == limit {
            next = last.map(|(_, ns, name)| format!("{revision}:{ns}:{name}"));
            break;
        }
        items.push(object.clone());
        last = Some(key);
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    Ok((
        StatusCode::OK,
        json!({
            "kind": format!("{}List", target.resource.kind),
            "apiVersion": target.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

fn get(shared: &Shared, target: &Target) -> Result<(StatusCode, Value), Refusal> {
    let name = target.name.as_deref().unwrap_or("");
    let store = shared.lock_store();
    store
        .get(&target.key(name))
        .map(|o| (StatusCode::OK, o.clone()))
        .ok_or_else(|| Refusal {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", target.resource.plural),
        })
}

fn write(
    shared: &Shared,
    target: &Target,
    verb: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), Refusal> {
    let bad = |message: String| Refusal {
        code: 400,
        reason: "BadRequest",
        message,
    };
    let object: Value = if verb == "delete" {
        Value::Null
    } else {
        serde_json::from_slice(body).or_else(|_| {
            serde_saphyr::from_slice::<Value>(body).map_err(|e| bad(format!("body: {e}")))
        })?
    };
    if verb == "patch" && content_type.starts_with("application/json-patch") {
        return Err(Refusal {
            code: 415,
            reason: "UnsupportedMediaType",
            message: "the stand-in takes merge, strategic and apply patches".into(),
        });
    }
    let event = match verb {
        "create" => {
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("metadata.name: Required value".into()))?
                .to_owned();
            let mut key = target.key(&name);
            if target.resource.namespaced && key.1.is_empty() {
                key.1 = object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_owned();
            }
            shared.write(|s| s.create(key, object))?
        }
        "update" => {
            let key = target.key(target.name.as_deref().unwrap_or(""));
            shared.write(|s| s.replace(key, object, target.status))?
        }
        "patch" => {
            let key = target.key(target.name.as_deref().unwrap_or(""));
            shared.write(|s| s.patch(key, &object, target.status))?
        }
        _ => {
            let key = target.key(target.name.as_deref().unwrap_or(""));
            shared.write(|s| s.delete(key))?
        }
    };
    let status = if verb == "create" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, event.object.clone()))
}

/// A watch: JSON lines, from the requested revision (or the current state as ADDED events when
/// none is given), then live; a BOOKMARK every bookmark interval when asked for; an ERROR event
/// with `410 Gone` when the revision is older than the history; the stream ends at
/// `timeoutSeconds`, when the server drops its connections, or when the watcher falls behind.
fn watch_stream(
    shared: Arc<Shared>,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return refusal(&r),
    };
    let resource = target.resource;
    let namespace = target.namespace.clone();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && v.as_str() != "0")
        .and_then(|v| v.parse().ok());
    let (mut sender, body) = Channel::<Bytes, Infallible>::new(64);
    let visible = move |o: &Value| {
        labels.matches(o)
            && fields.matches(o)
            && namespace.as_deref().is_none_or(|ns| {
                o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            })
    };
    // Under the store's lock: what to send first, and the live feed from right after it.
    let (first, mut live, mut last) = {
        let store = shared.lock_store();
        let live = shared.events.subscribe();
        let revision = store.revision();
        let first: Result<Vec<Value>, ()> = match from {
            Some(rv) if !initial_events => match store.events_since(rv) {
                None => Err(()),
                Some(events) => Ok(events
                    .iter()
                    .filter(|e| e.resource == resource)
                    .filter_map(|e| shown(e, &visible))
                    .collect()),
            },
            _ => {
                let mut initial: Vec<Value> = store
                    .list(resource, None, None)
                    .filter(|(_, o)| visible(o))
                    .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                    .collect();
                if initial_events {
                    let mut mark = bookmark(resource, revision);
                    mark["object"]["metadata"]["annotations"] =
                        json!({"k8s.io/initial-events-end": "true"});
                    initial.push(mark);
                }
                Ok(initial)
            }
        };
        (first, live, revision)
    };
    let mut epoch = shared.epoch.subscribe();
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let first = match first {
            Ok(first) => first,
            Err(()) => {
                let status = Refusal {
                    code: 410,
                    reason: "Expired",
                    message: format!("too old resource version: {}", from.unwrap_or(0)),
                }
                .status();
                let _ = sender
                    .send_data(line(&json!({"type": "ERROR", "object": status})))
                    .await;
                return;
            }
        };
        for event in first {
            if sender.send_data(line(&event)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            let out = tokio::select! {
                _ = &mut deadline => None,
                _ = epoch.changed() => return,
                _ = tick.tick() => bookmarks.then(|| bookmark(resource, last)),
                event = live.recv() => match event {
                    Ok(e) => {
                        last = e.revision;
                        if e.resource == resource { shown(&e, &visible) } else { None }
                    }
                    // Fallen behind: end the stream; the watcher resumes from what it has.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
            };
            match out {
                Some(event) if sender.send_data(line(&event)).await.is_err() => return,
                None if deadline.is_elapsed() => return,
                _ => {}
            }
        }
    });
    let mut response = Response::new(http_body_util::Either::Right(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The event a watch with this filter sees for a write, if any: a write that moves an object
/// into the watched set is ADDED, one that moves it out is DELETED.
fn shown(event: &Event, visible: &impl Fn(&Value) -> bool) -> Option<Value> {
    let now = visible(&event.object);
    let before = event.previous.as_ref().is_some_and(visible);
    let kind = match (event.kind, before, now) {
        (EventType::Deleted, true, _) => "DELETED",
        (EventType::Deleted, false, _) => return None,
        (_, true, true) => "MODIFIED",
        (_, false, true) => "ADDED",
        (_, true, false) => "DELETED",
        (_, false, false) => return None,
    };
    Some(json!({"type": kind, "object": event.object}))
}

fn bookmark(resource: Resource, revision: u64) -> Value {
    json!({
        "type": "BOOKMARK",
        "object": {
            "kind": resource.kind,
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
        },
    })
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refusal(r: &Refusal) -> Response<Body> {
    json_response(
        StatusCode::from_u16(r.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &r.status(),
    )
}

/// `a=b&c=d`, percent- and `+`-decoded.
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TokenReview: authenticated if the token is one the test issued for one of the asked
/// audiences (none asked: any).
fn token_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return refusal(&Refusal {
            code: 400,
            reason: "BadRequest",
            message: "not a TokenReview".into(),
        });
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let known = shared
        .reviewed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(token)
        .cloned();
    let status = match known {
        Some((audiences, user))
            if asked.is_empty() || asked.iter().any(|a| audiences.contains(a)) =>
        {
            json!({"authenticated": true, "user": user, "audiences": audiences})
        }
        Some(_) => json!({"authenticated": false, "error": "token audiences are invalid"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut answer = review.clone();
    answer["status"] = status;
    json_response(StatusCode::CREATED, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_resources_namespaces_and_the_status_subresource() {
        let t = Target::parse("/api/v1/namespaces/x/pods/a").expect("pod");
        assert_eq!(
            (t.resource.kind, t.namespace.as_deref(), t.name.as_deref()),
            ("Pod", Some("x"), Some("a"))
        );
        let t = Target::parse("/api/v1/namespaces/x").expect("namespace");
        assert_eq!(
            (t.resource.kind, t.name.as_deref()),
            ("Namespace", Some("x"))
        );
        let t = Target::parse("/apis/rampart.dev/v1alpha1/meshpolicies/m/status").expect("status");
        assert!(t.status && t.resource.kind == "MeshPolicy");
        assert!(Target::parse("/apis/nope/v1/things").is_none());
    }

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query("labelSelector=rampart.dev%2Fsecret%20in%20(a)&watch=1&x=a+b");
        assert_eq!(q["labelSelector"], "rampart.dev/secret in (a)");
        assert_eq!(q["x"], "a b");
    }
}
