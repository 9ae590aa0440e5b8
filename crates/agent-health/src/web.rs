//! The control center's web view: the fleet (every agent by version and state, filtered and paged so the
//! page stays small with tens of thousands of agents), the rollouts in the store (phase, steps, targets with
//! their evidence, analyses, who did what) and the actions promote, pause, resume and abort.
//!
//! Server-rendered HTML with a few lines of JavaScript: live updates come as server-sent events
//! (`/events`), and the page swaps its `<main>` for a fresh copy when something changed. Every page needs a
//! session: `/login` exchanges the control center's token (and a name for the audit trail) for a session
//! cookie (`HttpOnly`, `SameSite=Strict`); every action is a form POST that must carry the session's CSRF
//! token. Actions run through [`RolloutActions`], which the embedder provides (agentctl's runs the rollout
//! library with the name as the actor, so the rollout's audit trail says who acted from the web).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::Stream;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::control_center::{AgentRecord, AgentState, ControlCenter};

/// What the web view may do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebAction {
    /// Continue a paused rollout.
    Promote,
    /// Pause a running rollout at its next step.
    Pause,
    /// Continue a paused rollout (the same as promote, named for the operator who paused).
    Resume,
    /// Stop and revert.
    Abort,
}

impl WebAction {
    fn parse(s: &str) -> Option<WebAction> {
        Some(match s {
            "promote" => WebAction::Promote,
            "pause" => WebAction::Pause,
            "resume" => WebAction::Resume,
            "abort" => WebAction::Abort,
            _ => return None,
        })
    }

    /// Its name in URLs and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            WebAction::Promote => "promote",
            WebAction::Pause => "pause",
            WebAction::Resume => "resume",
            WebAction::Abort => "abort",
        }
    }
}

/// Carries out the web view's actions on rollouts (agentctl: the rollout library on the same store).
#[async_trait::async_trait]
pub trait RolloutActions: Send + Sync {
    /// Starts `action` on `rollout` for `actor`. Returns once it is under way (a promotion may run for
    /// minutes; the page follows it), or why it could not start.
    async fn act(&self, rollout: &str, action: WebAction, actor: &str) -> Result<String, String>;
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    id: String,
    actor: String,
    csrf: String,
    expires: OffsetDateTime,
    /// The outcome of its last action, shown once on the next page (never taken from a URL).
    flash: Option<(bool, String)>,
}

/// Sessions by id.
pub(crate) type Sessions = RwLock<HashMap<String, Session>>;

/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The most sessions kept at once; signing in beyond ends the one closest to expiry.
pub const MAX_SESSIONS: usize = 256;
/// Failed sign-ins a client address may make in [`SIGN_IN_WINDOW`] before it must wait for the window's end.
pub const MAX_FAILED_SIGN_INS: u32 = 5;
/// The window failed sign-ins are counted in, from the first failure: five minutes.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(300);

/// Failed sign-ins by client address: how many, since when.
pub(crate) type SignInFailures = std::sync::Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>;

/// The web view's script, served as a file so that the pages' Content-Security-Policy allows no inline
/// script. Live updates: the server says when the fleet or a rollout changed; the page fetches itself again
/// and swaps its content, keeping the scroll position.
const SCRIPT: &str = r#"const es = new EventSource('/events');
let last = null;
es.addEventListener('change', e => {
  if (last !== null && last !== e.data) {
    fetch(location.href, {credentials: 'same-origin'}).then(r => r.text()).then(t => {
      const doc = new DOMParser().parseFromString(t, 'text/html');
      const m = doc.getElementById('main');
      if (m) document.getElementById('main').innerHTML = m.innerHTML;
    });
  }
  last = e.data;
});
"#;

/// The web view's style, served as a file for the same reason.
const STYLE: &str = r#"body{font:14px system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#1b1f24;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600} .who{margin-left:auto;color:#ccc}
main{padding:16px 20px} table{border-collapse:collapse;background:#fff;margin:8px 0 16px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top} th{background:#eef1f4}
.up,.succeeded,.updated,.pass,.Successful{color:#1a7f37} .late,.paused,.staged,.pending,.Inconclusive{color:#9a6700}
.down,.failed,.broken,.rolled-back,.aborted,.high,.low,.Failed{color:#cf222e}
.current{font-weight:700;background:#fff8c5} .chips span{display:inline-block;background:#fff;border:1px solid #d0d7de;border-radius:12px;padding:2px 10px;margin:2px}
button{cursor:pointer} .actions form{display:inline} .note{color:#57606a} pre{white-space:pre-wrap;margin:0}
"#;

/// What every answer of the web view carries: no script, style, frame or form target but the control
/// center's own, no content sniffing, nothing cached (the pages show the fleet and carry CSRF tokens).
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

async fn security_headers(mut response: Response) -> Response {
    for (name, value) in SECURITY_HEADERS {
        response
            .headers_mut()
            .insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

/// The client's address, when the server was given it (`serve` does).
struct Peer(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::listener::PeerAddr>>()
                .map(|c| c.0 .0.ip()),
        ))
    }
}
/// Agents per page of the fleet view.
const PAGE: usize = 200;
const COOKIE: &str = "agentctl_session";

fn random_hex() -> String {
    let mut b = [0u8; 16];
    // The OS's generator; a session id must not be guessable.
    getrandom::fill(&mut b).expect("the operating system's random generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// HTML-escapes `s`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The web view's routes.
pub(crate) fn routes() -> Router<Arc<ControlCenter>> {
    Router::new()
        .route("/", get(fleet_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/rollouts", get(rollouts_page))
        .route("/rollouts/{name}", get(rollout_page))
        .route("/rollouts/{name}/{action}", post(act))
        .route("/events", get(events))
        .route(
            "/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
        )
        .route(
            "/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .layer(axum::middleware::map_response(security_headers))
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))
}

fn session(cc: &ControlCenter, headers: &HeaderMap) -> Option<Session> {
    let id = session_id(headers)?;
    let sessions = cc.sessions.read().unwrap_or_else(|p| p.into_inner());
    sessions
        .get(&id)
        .filter(|s| s.expires > OffsetDateTime::now_utc())
        .cloned()
}

/// Whether the session `id` is still signed in.
fn signed_in(cc: &ControlCenter, id: &str) -> bool {
    let sessions = cc.sessions.read().unwrap_or_else(|p| p.into_inner());
    sessions.get(id).is_some_and(|s| s.expires > OffsetDateTime::now_utc())
}

/// Takes the session's flash message (shown once).
fn take_flash(cc: &ControlCenter, session: &Session) -> Option<(bool, String)> {
    let mut sessions = cc.sessions.write().unwrap_or_else(|p| p.into_inner());
    sessions.get_mut(&session.id).and_then(|s| s.flash.take())
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn page(title: &str, session: Option<&Session>, body: &str) -> Html<String> {
    let who = session
        .map(|s| {
            format!(
                r#"<form method="post" action="/logout" class="who">{} <input type="hidden" name="csrf" value="{}"><button>sign out</button></form>"#,
                esc(&s.actor),
                esc(&s.csrf)
            )
        })
        .unwrap_or_default();
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · agentctl</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/app.css">
</head><body><header><a href="/">Fleet</a><a href="/rollouts">Rollouts</a>{who}</header>
<main id="main">{body}</main>
<script src="/app.js"></script></body></html>"#,
        title = esc(title)
    ))
}

async fn login_page(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap) -> Response {
    let s = session(&cc, &headers);
    page(
        "Sign in",
        s.as_ref(),
        r#"<h1>Sign in</h1><form method="post" action="/login">
<p><label>Your name (recorded with every action) <input name="name" id="name" required maxlength="64"></label></p>
<p><label>Control-center token <input name="token" id="token" type="password" required></label></p>
<p><button id="signin">Sign in</button></p></form>"#,
    )
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    token: String,
}

async fn login(State(cc): State<Arc<ControlCenter>>, peer: Peer, Form(f): Form<LoginForm>) -> Response {
    // Failed sign-ins are counted per client address: past the limit, that address waits for the window's
    // end, token right or wrong (so guessing costs a window per few tries).
    if let Some(ip) = peer.0 {
        let failures = cc.sign_in_failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, since)) = failures.get(&ip) {
            let left = SIGN_IN_WINDOW.saturating_sub(since.elapsed());
            if *n >= MAX_FAILED_SIGN_INS && !left.is_zero() {
                tracing::warn!(%ip, "web: a sign-in was refused: too many failed sign-ins from this address");
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, left.as_secs().max(1).to_string())],
                    page(
                        "Sign in",
                        None,
                        &format!(
                            r#"<h1>Sign in</h1><p class="down">Too many failed sign-ins from your address; try again in {} s.</p>"#,
                            left.as_secs().max(1)
                        ),
                    ),
                )
                    .into_response();
            }
        }
    }
    let name: String = f.name.trim().chars().filter(|c| !c.is_control()).take(64).collect();
    if !cc.token_matches(f.token.trim()) || name.is_empty() {
        tracing::warn!("web: a sign-in with a wrong token or no name was refused");
        if let Some(ip) = peer.0 {
            let mut failures = cc.sign_in_failures.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: windows that ended are forgotten first.
            if failures.len() >= 10_000 {
                failures.retain(|_, (_, since)| since.elapsed() < SIGN_IN_WINDOW);
            }
            let entry = failures.entry(ip).or_insert((0, std::time::Instant::now()));
            if entry.1.elapsed() >= SIGN_IN_WINDOW {
                *entry = (0, std::time::Instant::now());
            }
            entry.0 += 1;
        }
        return (
            StatusCode::UNAUTHORIZED,
            page(
                "Sign in",
                None,
                r#"<h1>Sign in</h1><p class="down">Wrong token, or no name. <a href="/login">Try again</a>.</p>"#,
            ),
        )
            .into_response();
    }
    if let Some(ip) = peer.0 {
        cc.sign_in_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
    let id = random_hex();
    let actor = format!("{name} (web)");
    tracing::info!(actor, "web: signed in");
    {
        let mut sessions = cc.sessions.write().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        sessions.retain(|_, s| s.expires > now);
        // At the cap, the session closest to its end makes room.
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions.values().min_by_key(|s| s.expires).map(|s| s.id.clone()) else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                actor,
                csrf: random_hex(),
                expires: now + SESSION_TTL,
                flash: None,
            },
        );
    }
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    // Signing out ends the session on the server, or nothing changes: never a cleared cookie whose session
    // stays valid.
    if let Some(s) = session(&cc, &headers) {
        if !crate::control_center::constant_time_eq(f.csrf.as_bytes(), s.csrf.as_bytes()) {
            return (
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or wrong; sign out with the page's button\n",
            )
                .into_response();
        }
        let mut sessions = cc.sessions.write().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&s.id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
struct FleetQuery {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    page: usize,
}

fn state_name(s: AgentState) -> &'static str {
    match s {
        AgentState::Up => "up",
        AgentState::Late => "late",
        AgentState::Down => "down",
    }
}

fn ago(t: OffsetDateTime) -> String {
    let s = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn health(r: &AgentRecord) -> String {
    match &r.last.health {
        None => r#"<span class="note">unknown</span>"#.into(),
        Some(h) if h.healthy => r#"<span class="pass">healthy</span>"#.into(),
        Some(h) => format!(r#"<span class="down">unhealthy</span> {}"#, esc(&h.last_error)),
    }
}

async fn fleet_page(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap, Query(q): Query<FleetQuery>) -> Response {
    let Some(s) = session(&cc, &headers) else {
        return to_login();
    };
    let agents = cc.agents();
    let mut by_version: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for a in &agents {
        let i = match a.state {
            AgentState::Up => 0,
            AgentState::Late => 1,
            AgentState::Down => 2,
        };
        by_version.entry(a.last.version.as_str()).or_default()[i] += 1;
    }
    let link = |version: Option<&str>, state: Option<&str>, page: usize| {
        let mut q = Vec::new();
        if let Some(v) = version {
            q.push(format!("version={}", url_escape(v)));
        }
        if let Some(st) = state {
            q.push(format!("state={st}"));
        }
        if page > 0 {
            q.push(format!("page={page}"));
        }
        if q.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{}", q.join("&"))
        }
    };
    let mut versions = String::from(
        r#"<table id="versions"><tr><th>version</th><th>agents</th><th class="up">up</th><th class="late">late</th><th class="down">down</th></tr>"#,
    );
    for (v, [up, late, down]) in &by_version {
        versions.push_str(&format!(
            r#"<tr data-version="{ev}"><td><a href="{href}">{ev}</a></td><td class="count">{}</td><td>{up}</td><td>{late}</td><td>{down}</td></tr>"#,
            up + late + down,
            ev = esc(v),
            href = esc(&link(Some(v), None, 0)),
        ));
    }
    versions.push_str("</table>");
    let selected: Vec<&AgentRecord> = agents
        .iter()
        .filter(|a| q.version.as_deref().is_none_or(|v| a.last.version == v))
        .filter(|a| q.state.as_deref().is_none_or(|st| state_name(a.state) == st))
        .collect();
    let pages = selected.len().div_ceil(PAGE).max(1);
    let page_no = q.page.min(pages - 1);
    let mut rows = String::new();
    for a in selected.iter().skip(page_no * PAGE).take(PAGE) {
        let st = state_name(a.state);
        rows.push_str(&format!(
            r#"<tr class="agent"><td>{}</td><td>{}</td><td class="{st}">{st}</td><td title="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&a.last.agent_id),
            esc(&a.last.version),
            a.last_seen
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            ago(a.last_seen),
            health(a),
            esc(a.last.container.get(..12).unwrap_or(&a.last.container)),
        ));
    }
    let filter = match (&q.version, &q.state) {
        (None, None) => String::new(),
        (v, st) => format!(
            r#" · showing {}{} · <a href="/">all</a>"#,
            v.as_deref().map(|v| format!("version {} ", esc(v))).unwrap_or_default(),
            st.as_deref().map(|s| format!("state {}", esc(s))).unwrap_or_default()
        ),
    };
    let nav = if pages > 1 {
        format!(
            r#"<p>page {} of {pages} {} {}</p>"#,
            page_no + 1,
            if page_no > 0 {
                format!(
                    r#"<a href="{}">previous</a>"#,
                    esc(&link(q.version.as_deref(), q.state.as_deref(), page_no - 1))
                )
            } else {
                String::new()
            },
            if page_no + 1 < pages {
                format!(
                    r#"<a id="next" href="{}">next</a>"#,
                    esc(&link(q.version.as_deref(), q.state.as_deref(), page_no + 1))
                )
            } else {
                String::new()
            }
        )
    } else {
        String::new()
    };
    let states = ["up", "late", "down"]
        .iter()
        .map(|st| {
            let n = agents.iter().filter(|a| state_name(a.state) == *st).count();
            format!(
                r#"<span class="{st}"><a href="{}">{st}</a> <b id="count-{st}">{n}</b></span>"#,
                esc(&link(None, Some(st), 0))
            )
        })
        .collect::<Vec<_>>()
        .join("");
    let body = format!(
        r#"<h1>Fleet</h1><p class="chips"><span>agents <b id="count-total">{}</b></span>{states}</p>
<h2>By version</h2>{versions}
<h2>Agents</h2><p class="note">{} agents{filter}; {PAGE} per page</p>{nav}
<table id="agents"><tr><th>agent</th><th>version</th><th>state</th><th>last seen</th><th>self-reported health</th><th>container</th></tr>{rows}</table>{nav}"#,
        agents.len(),
        selected.len(),
    );
    page("Fleet", Some(&s), &body).into_response()
}

/// What percent-encoding leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn url_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED_KEPT).to_string()
}

async fn rollout_docs(cc: &ControlCenter) -> Vec<(String, serde_json::Value)> {
    let Some(store) = &cc.store else {
        return Vec::new();
    };
    let mut docs = store.documents("rollout").await.unwrap_or_default();
    docs.sort_by(|a, b| {
        b.1["updatedAt"]
            .as_str()
            .unwrap_or_default()
            .cmp(a.1["updatedAt"].as_str().unwrap_or_default())
    });
    docs
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn rollouts_page(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap) -> Response {
    let Some(s) = session(&cc, &headers) else {
        return to_login();
    };
    let mut rows = String::new();
    for (name, d) in rollout_docs(&cc).await {
        let phase = text(&d["machine"]["phase"]);
        let steps = d["plan"]["steps"].as_array().map_or(0, Vec::len);
        rows.push_str(&format!(
            r#"<tr><td><a href="/rollouts/{}">{}</a></td><td class="{ph}">{ph}</td><td>{}/{steps}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            url_escape(&name),
            esc(&name),
            d["nextStep"].as_u64().unwrap_or(0).min(steps as u64),
            esc(&text(&d["pinned"])),
            d["targets"].as_array().map_or(0, Vec::len),
            esc(&text(&d["updatedAt"])),
            ph = esc(&phase),
        ));
    }
    let body = format!(
        r#"<h1>Rollouts</h1><table id="rollouts"><tr><th>rollout</th><th>phase</th><th>steps done</th><th>image</th><th>targets</th><th>updated</th></tr>{rows}</table>"#
    );
    page("Rollouts", Some(&s), &body).into_response()
}

fn describe_step(step: &serde_json::Value) -> String {
    // The rollout library's own words for the step; a step of a newer version is shown by its kind.
    serde_json::from_value::<agent_core::PlanStep>(step.clone())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| text(&step["kind"]))
}

async fn rollout_page(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let Some(s) = session(&cc, &headers) else {
        return to_login();
    };
    let Some((_, d)) = rollout_docs(&cc).await.into_iter().find(|(n, _)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            page("Not found", Some(&s), "<h1>No such rollout</h1>"),
        )
            .into_response();
    };
    let phase = text(&d["machine"]["phase"]);
    let next = d["nextStep"].as_u64().unwrap_or(0) as usize;
    let mut steps = String::new();
    for (i, step) in d["plan"]["steps"].as_array().into_iter().flatten().enumerate() {
        let (class, mark) = match i.cmp(&next) {
            std::cmp::Ordering::Less => ("succeeded", "done"),
            std::cmp::Ordering::Equal if !matches!(phase.as_str(), "succeeded") => ("current", "next"),
            _ => ("", ""),
        };
        steps.push_str(&format!(
            r#"<tr class="step {class}"><td>{}</td><td>{}</td><td>{mark}</td></tr>"#,
            i + 1,
            esc(&describe_step(step))
        ));
    }
    let mut targets = String::new();
    for t in d["targets"].as_array().into_iter().flatten() {
        let st = text(&t["status"]);
        targets.push_str(&format!(
            r#"<tr class="target"><td>{}</td><td>{}</td><td class="{st}">{st}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>"#,
            esc(&text(&t["container"])),
            esc(&text(&t["host"])),
            esc(&text(&t["previous"])),
            esc(&text(&t["revision"])),
            esc([t["message"].as_str(), t["evidence"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("\n")
                .trim_end()),
            st = esc(&st),
        ));
    }
    let mut analyses = String::new();
    for a in d["analyses"].as_array().into_iter().flatten() {
        let outcome = text(&a[1]["outcome"]);
        let evidence: Vec<String> = a[1]["measurements"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| esc(m["message"].as_str().unwrap_or_default()))
            .collect();
        analyses.push_str(&format!(
            r#"<tr class="analysis"><td>{}</td><td class="{o}">{o}</td><td><pre>{}</pre></td></tr>"#,
            esc(&text(&a[0])),
            evidence.join("\n"),
            o = esc(&outcome),
        ));
    }
    let audit: String = d["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                r#"<tr class="audit"><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&text(&a["at"])),
                esc(&text(&a["by"])),
                esc(&text(&a["action"]))
            )
        })
        .collect();
    let form = |action: &str, label: &str| {
        format!(
            r#"<form method="post" action="/rollouts/{}/{action}"><input type="hidden" name="csrf" value="{}"><button id="{action}">{label}</button></form> "#,
            url_escape(&name),
            esc(&s.csrf)
        )
    };
    let actions = match phase.as_str() {
        "paused" => form("promote", "Promote") + &form("abort", "Abort"),
        "progressing" => form("pause", "Pause") + &form("abort", "Abort"),
        "rolling-back" => form("abort", "Finish the rollback"),
        _ => String::new(),
    };
    // The outcome of this session's last action, kept by the server: no URL can put text in the banner.
    let flash = match take_flash(&cc, &s) {
        Some((false, e)) => format!(r#"<p class="down" id="flash">{}</p>"#, esc(&e)),
        Some((true, m)) => format!(r#"<p class="pass" id="flash">{}</p>"#, esc(&m)),
        None => String::new(),
    };
    let traffic = d["traffic"]["weight"]
        .as_u64()
        .map(|w| format!("<p>traffic: {w} % to the new version</p>"))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Rollout {}</h1>{flash}<p>phase <b id="phase" class="{ph}">{ph}</b>{} · image {} · started {}</p>{traffic}
<p class="actions">{actions}</p>
<h2>Steps</h2><table id="steps"><tr><th>#</th><th>step</th><th></th></tr>{steps}</table>
<h2>Targets</h2><table id="targets"><tr><th>container</th><th>host</th><th>status</th><th>previous</th><th>revision</th><th>evidence</th></tr>{targets}</table>
<h2>Analyses</h2><table id="analyses"><tr><th>analysis</th><th>outcome</th><th>evidence</th></tr>{analyses}</table>
<h2>History</h2><table id="audit"><tr><th>when</th><th>who</th><th>what</th></tr>{audit}</table>"#,
        esc(&name),
        d["reason"]
            .as_str()
            .map(|r| format!(" ({})", esc(r)))
            .unwrap_or_default(),
        esc(&text(&d["pinned"])),
        esc(&text(&d["startedAt"])),
        ph = esc(&phase),
    );
    page(&format!("Rollout {name}"), Some(&s), &body).into_response()
}

async fn act(
    State(cc): State<Arc<ControlCenter>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(s) = session(&cc, &headers) else {
        tracing::warn!(rollout = name, action, "web: an action without a session was refused");
        return (StatusCode::FORBIDDEN, "sign in first: /login\n").into_response();
    };
    if !crate::control_center::constant_time_eq(f.csrf.as_bytes(), s.csrf.as_bytes()) {
        tracing::warn!(
            rollout = name,
            action,
            actor = s.actor,
            "web: an action without the CSRF token was refused"
        );
        return (
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page\n",
        )
            .into_response();
    }
    let Some(action) = WebAction::parse(&action) else {
        return (StatusCode::NOT_FOUND, "no such action\n").into_response();
    };
    let Some(actions) = cc.actions.get().cloned() else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "this control center runs no rollout actions\n",
        )
            .into_response();
    };
    tracing::info!(rollout = name, action = action.name(), actor = s.actor, "web: action");
    let outcome = match actions.act(&name, action, &s.actor).await {
        Ok(m) => (true, m),
        Err(e) => (false, e),
    };
    if let Some(own) = cc.sessions.write().unwrap_or_else(|p| p.into_inner()).get_mut(&s.id) {
        own.flash = Some(outcome);
    }
    Redirect::to(&format!("/rollouts/{}", url_escape(&name))).into_response()
}

/// A fingerprint of what the pages show: agents per version and state, and each rollout's last change;
/// made at most once a second whatever the number of signed-in browsers, from counts (no record copied).
async fn fingerprint(cc: &ControlCenter) -> String {
    let mut cached = cc.fingerprint.lock().await;
    if let Some((at, digest)) = cached.as_ref() {
        if at.elapsed() < Duration::from_millis(900) {
            return digest.clone();
        }
    }
    let counts = cc.counts();
    let rollouts: Vec<String> = rollout_docs(cc)
        .await
        .iter()
        .map(|(n, d)| format!("{n}:{}", text(&d["updatedAt"])))
        .collect();
    let data = format!("{counts:?}|{}", rollouts.join(","));
    let digest = format!("{:016x}", fnv(data.as_bytes()));
    *cached = Some((std::time::Instant::now(), digest.clone()));
    digest
}

async fn events(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap) -> Response {
    let Some(s) = session(&cc, &headers) else {
        return (StatusCode::FORBIDDEN, "sign in first\n").into_response();
    };
    // Only a digest goes out, and only when it changed; the page asks for itself again then. The stream
    // ends once its session does (signed out, expired).
    let start: (Arc<ControlCenter>, String, Option<String>) = (cc, s.id, None);
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(futures_util::stream::unfold(start, |(cc, id, last)| async move {
            loop {
                if !signed_in(&cc, &id) {
                    return None;
                }
                let digest = fingerprint(&cc).await;
                if last.as_ref() != Some(&digest) {
                    let event = Event::default().event("change").data(digest.clone());
                    return Some((Ok(event), (cc, id, Some(digest))));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// FNV-1a: a short stable digest of the fingerprint (not a security measure).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_agents_and_engines_is_escaped() {
        assert_eq!(esc(r#"<script>"a"&'b'"#), "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;");
        assert_eq!(url_escape("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(random_hex().len(), 32);
        assert_ne!(random_hex(), random_hex());
    }
}
