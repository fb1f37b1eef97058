//! Push notifications: the [`PushProvider`] trait that APNs, FCM, Web Push and webhook providers implement.
//!
//! A provider sends one notification to one device and classifies the outcome so that the dispatcher can
//! retry ([`PushError::is_retryable`], [`PushError::retry_after`]) or prune the token
//! ([`PushError::InvalidToken`]). Retry, timeout, rate limit and concurrency are tower layers around the
//! provider, not provider code.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::id::{DeviceId, UserId};
use crate::model::Millis;
use crate::store::BoxError;

/// The push platform a device token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging (HTTP v1).
    Fcm,
    /// Web Push (RFC 8030) with VAPID.
    WebPush,
    /// An HTTP callback of the application's own.
    Webhook,
}

/// A registered push target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Owner.
    pub user: UserId,
    /// The device's id.
    pub id: DeviceId,
    /// Which provider serves it.
    pub platform: Platform,
    /// The provider's address for it: APNs/FCM token, Web Push subscription JSON, webhook URL.
    pub token: String,
}

/// Delivery priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Deliver now, wake the device.
    #[default]
    High,
    /// Deliver when convenient for the device's battery.
    Normal,
}

/// One notification, as rendered for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Visible title; `None` for silent/data-only pushes.
    pub title: Option<String>,
    /// Visible body text.
    pub body: Option<String>,
    /// Application data delivered to the app.
    pub data: serde_json::Value,
    /// Priority.
    pub priority: Priority,
    /// Drop the notification if it cannot be delivered by then (ms since the epoch).
    pub expires_at: Option<Millis>,
    /// Newer notifications with the same key replace older undelivered ones.
    pub collapse_key: Option<String>,
}

/// A successful hand-off to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReceipt {
    /// The provider's id for the notification, when it returns one.
    pub provider_id: Option<String>,
}

/// What a provider can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The token is no longer valid (APNs 410 / BadDeviceToken, FCM UNREGISTERED, Web Push 404/410): prune it.
    #[error("invalid device token")]
    InvalidToken,
    /// The provider asks to slow down.
    #[error("rate limited by the provider")]
    RateLimited {
        /// The provider's hint, if any.
        retry_after: Option<Duration>,
    },
    /// The provider is temporarily failing (5xx, connection errors, timeouts).
    #[error("provider unavailable: {source}")]
    Unavailable {
        /// The provider's hint, if any.
        retry_after: Option<Duration>,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// The provider refused this notification for good (payload too large, bad request, bad credentials).
    #[error("rejected by the provider: {0}")]
    Rejected(String),
}

impl PushError {
    /// Whether sending the same notification again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable { .. })
    }

    /// The provider's hint for when to retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Sends notifications to one platform.
#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    /// The platform this provider serves.
    fn platform(&self) -> Platform;

    /// Sends `notification` to `device`.
    async fn send(&self, device: &Device, notification: &Notification) -> Result<PushReceipt, PushError>;
}
