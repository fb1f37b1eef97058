//! The innermost command service: executes authorized commands against the store, the broker and the hub.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;
use tracing::Instrument;

use crate::broker::BrokerEvent;
use crate::detach::Detached;
use crate::hub::{CommandRequest, CommandResponse, HubCore};
use crate::id::{ChannelId, ChannelKind, ClientMsgId, MessageId, UserId};
use crate::model::{Body, Channel, CursorKind, MessageKind, NewMessage, Principal, Seq, now_millis};
use crate::protocol::{self, Command, HistoryRange, Reply};
use crate::session::Session;
use crate::status::{Code, Status};
use crate::store::ReadRange;

/// Executes commands. Authorization has already happened (see [`AuthorizeLayer`](crate::layer::AuthorizeLayer)).
#[derive(Clone)]
pub struct Engine {
    core: Arc<HubCore>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    pub(crate) fn new(core: Arc<HubCore>) -> Self {
        Self { core }
    }
}

impl Service<CommandRequest> for Engine {
    type Response = CommandResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<CommandResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        let core = self.core.clone();
        Box::pin(async move { Ok(execute(&core, req).await) })
    }
}

async fn execute(core: &Arc<HubCore>, req: CommandRequest) -> CommandResponse {
    let CommandRequest { session, principal, command, .. } = req;
    match command {
        Command::Subscribe { channel, since } => subscribe(core, &session, channel, since).await,
        Command::Unsubscribe { channel } => {
            session.remove_subscription(&channel);
            core.index_remove(&channel, &session);
            Ok(Reply::Ok)
        }
        Command::Send { channel, client_id, kind, refers, body } => {
            send(core, &principal, channel, client_id, kind, refers, body).await
        }
        Command::Ack { channel, seq } => cursor(core, &principal, channel, CursorKind::Delivered, seq).await,
        Command::Read { channel, seq } => cursor(core, &principal, channel, CursorKind::Read, seq).await,
        Command::History { channel, range, limit } => {
            let limits = &core.config.limits;
            let limit = limit.unwrap_or(limits.history_default).min(limits.history_max) as usize;
            let range = match range {
                HistoryRange::Latest => ReadRange::Before(Seq::MAX),
                HistoryRange::Before(s) => ReadRange::Before(s),
                HistoryRange::After(s) => ReadRange::After(s),
            };
            Ok(Reply::History(core.store.read(&channel, range, limit).await?))
        }
        Command::Typing { channel, active } => {
            publish_ephemeral(core, BrokerEvent::Typing { channel, user: principal.user.clone(), active }).await;
            Ok(Reply::Ok)
        }
        Command::Create { channel, members } => create(core, &principal, channel, members).await,
        // Handled by the hub before the stack; reaching here is a bug in a custom stack, not the client's fault.
        Command::Auth { .. } | Command::Ping => Err(Status::internal()),
    }
}

/// Removes a half-made subscription if the replay does not finish (error, timeout, connection closed).
struct ReplayGuard<'a> {
    core: &'a HubCore,
    session: &'a Arc<Session>,
    channel: &'a ChannelId,
    armed: bool,
}

impl Drop for ReplayGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.remove_subscription(self.channel);
            self.core.index_remove(self.channel, self.session);
        }
    }
}

async fn subscribe(core: &HubCore, session: &Arc<Session>, channel: ChannelId, since: Option<Seq>) -> CommandResponse {
    let max = core.config.limits.max_subscriptions;
    if !session.is_subscribed(&channel) && session.subscription_count() >= max {
        return Err(Status::new(Code::LimitExceeded, format!("at most {max} subscriptions per session")));
    }
    // Register first, read second: every message published from now on is either seen live (and noted) or
    // found by the reads below. See `Session::try_go_live`.
    session.begin_replay(channel.clone());
    core.index_add(&channel, session);
    let mut guard = ReplayGuard { core, session, channel: &channel, armed: true };
    // A `since` beyond the newest message (a client from before a store reset, or a bug) is clamped, or the
    // subscription would silently skip every message up to it. The reply's seq tells the client.
    let head = core.store.last_seq(&channel).await?;
    let mut last = since.map_or(head, |s| s.min(head));
    let page_size = core.config.limits.replay_page.max(1);
    loop {
        let page = core.store.read(&channel, ReadRange::After(last), page_size).await?;
        for m in &page.messages {
            if !session.push(protocol::encode_message(m)).await {
                return Err(Status::new(Code::Unavailable, "session closed"));
            }
            last = m.seq;
        }
        if page.more {
            continue;
        }
        match session.try_go_live(&channel, last) {
            Some(true) => break,
            Some(false) => continue,
            None => return Err(Status::new(Code::Conflict, "the subscription was cancelled while replaying")),
        }
    }
    guard.armed = false;
    drop(guard);
    Ok(Reply::Subscribed { channel, seq: last })
}

async fn send(
    core: &Arc<HubCore>,
    principal: &Principal,
    channel: ChannelId,
    client_id: Option<ClientMsgId>,
    kind: MessageKind,
    refers: Option<Seq>,
    body: Body,
) -> CommandResponse {
    let max = core.config.limits.max_body_bytes;
    if body.get().len() > max {
        return Err(Status::new(
            Code::TooLarge,
            format!("body is {} bytes, at most {max} are allowed", body.get().len()),
        ));
    }
    if let Some(target) = refers {
        let original = core
            .store
            .get(&channel, target)
            .await?
            .ok_or_else(|| Status::new(Code::NotFound, format!("message {target} does not exist in {channel}")))?;
        if original.kind != MessageKind::Message {
            return Err(Status::bad_request(format!("message {target} is not an ordinary message")));
        }
        if original.sender != principal.user {
            return Err(Status::forbidden("only the sender may edit or recall a message"));
        }
    }
    let msg = NewMessage {
        channel,
        id: MessageId::generate(),
        sender: principal.user.clone(),
        client_id,
        kind,
        refers,
        ts: now_millis(),
        body,
    };
    // Append + publish run here, in the connection's task (no task spawned per send), but detached: if this
    // future is dropped before they finish (the connection went away, the command timed out), they finish in a
    // task of their own. So the message is still either not stored, or stored and published — never stored and
    // silently left out of live delivery — and a batch of the channel's pipeline is never abandoned halfway.
    let task_core = core.clone();
    // The work continues the command's span: the store and publish spans stay its children.
    let work = async move { task_core.append_and_publish(msg).await }.instrument(tracing::Span::current());
    let appended = Detached::new(work).await.map_err(|e| {
        tracing::error!(error = %e, "send failed");
        Status::internal()
    })??;
    let m = &appended.message;
    Ok(Reply::Sent { seq: m.seq, mid: m.id, ts: m.ts, dup: appended.duplicate })
}

async fn cursor(
    core: &HubCore,
    principal: &Principal,
    channel: ChannelId,
    kind: CursorKind,
    seq: Seq,
) -> CommandResponse {
    let user = &principal.user;
    let before = core.store.cursor(&channel, user, kind).await?;
    if seq <= before {
        // Nothing moves (cursors never go backward); nothing to broadcast.
        return Ok(Reply::Cursor { seq: before });
    }
    let last = core.store.last_seq(&channel).await?;
    if seq > last {
        return Err(Status::bad_request(format!("seq {seq} is beyond the newest message of {channel} ({last})")));
    }
    if kind == CursorKind::Read {
        // What has been read has been delivered.
        core.store.set_cursor(&channel, user, CursorKind::Delivered, seq).await?;
    }
    let now = core.store.set_cursor(&channel, user, kind, seq).await?;
    // Broadcast only a move this command made (a concurrent one may have gone further).
    let broadcast = now == seq
        && matches!((channel.kind(), kind), (ChannelKind::Direct, _) | (ChannelKind::Group, CursorKind::Read));
    if broadcast {
        publish_ephemeral(core, BrokerEvent::Receipt { channel, user: user.clone(), kind, seq }).await;
    }
    Ok(Reply::Cursor { seq: now })
}

async fn publish_ephemeral(core: &HubCore, event: BrokerEvent) {
    if let Err(e) = core.broker.publish(event).await {
        tracing::debug!(error = %e, "ephemeral event not published");
    }
}

async fn create(core: &HubCore, principal: &Principal, channel: ChannelId, members: Vec<UserId>) -> CommandResponse {
    if channel.kind() != ChannelKind::Group {
        return Err(Status::bad_request("only group channels are created explicitly"));
    }
    let mut all = members;
    all.push(principal.user.clone());
    all.sort();
    all.dedup();
    let max = core.config.limits.max_group_members;
    if all.len() > max {
        return Err(Status::new(Code::LimitExceeded, format!("a group has at most {max} members")));
    }
    let meta = Channel { id: channel.clone(), created_by: principal.user.clone(), created_at: now_millis() };
    core.store.create_channel(meta, &all).await?;
    Ok(Reply::Created { channel })
}
