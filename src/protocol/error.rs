//! The error table: every error a server can answer with.

/// A numeric error code, as carried by an ERROR response and by each rejected event of
/// an ingest acknowledgement. `docs/protocol.md` has the same table for client authors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The body does not decode as the operation's layout (framing intact, the connection
    /// stays open), or the frame's length is shorter than its header (the connection is
    /// closed).
    MalformedFrame = 1,
    /// The frame's protocol version is not one the server speaks.
    UnsupportedVersion = 2,
    UnknownOpcode = 3,
    /// The frame is larger than the server's limit; the server closes the connection.
    FrameTooLarge = 4,
    /// The first request on a connection must be HELLO.
    HelloRequired = 5,
    InvalidUtf8 = 6,
    /// The operation is reserved but not available in this server version.
    NotImplemented = 7,
    BadJson = 10,
    UnknownEventType = 11,
    UnknownChannel = 12,
    BadKey = 13,
    BadProperty = 14,
    BadAttribute = 15,
    BadTimestamp = 16,
    /// The event is further in the future than the server's allowed clock skew.
    FutureTimestamp = 17,
    UnknownSegment = 18,
    BadQuery = 19,
    /// The engine cannot take more customers (a shard's id range is full).
    Capacity = 20,
    UnknownOffer = 21,
    /// FEEDBACK names a decision the server does not remember, or an offer that decision
    /// did not return.
    UnknownDecision = 22,
    /// The offer's budget is spent: the feedback is not recorded.
    BudgetSpent = 23,
    /// A DECIDE context field is not declared, or has the wrong type.
    BadContext = 24,
    /// FEEDBACK for a customer omnia does not know, with no event type to create one.
    UnknownCustomer = 25,
    /// The write-ahead log cannot store changes now (a full or failing disk): the
    /// request was refused and nothing of it applied. The log retries by itself, so the
    /// same request can succeed later. (Also the answer, at shutdown, to a request that
    /// was applied but whose record the log was closed without storing: never
    /// acknowledged, and gone with the process.)
    StorageFailed = 26,
    /// RELOAD: the server's config file has errors (the message lists them with their
    /// places). The running config stays.
    InvalidConfig = 27,
    /// RELOAD: the config is valid but cannot replace the running one (for example it
    /// changes the shard count or removes a namespace), or the server has no config file
    /// to reload. The running config stays.
    ReloadRefused = 28,
    /// An event's strings are longer than the server's limits (`engine.max_value_bytes`
    /// for one value, `engine.max_event_bytes` for the whole event).
    EventTooLarge = 29,
    /// The server is at its connection limit: it answered this one and closed it. Try
    /// again later, or on another node.
    ServerBusy = 30,
    /// Not an error: the event's message id was applied within `engine.dedup_window`, so
    /// this copy was acknowledged and not applied again. Reported per event, like a
    /// rejection, so that an acknowledgement counts duplicates apart; nothing to do.
    Duplicate = 31,
    /// The server requires a credential and the connection has none, or the one sent is
    /// unknown, revoked or mistyped (AUTH; an HTTP request's Authorization).
    Unauthenticated = 32,
    /// The credential is valid but its principal lacks the role the operation needs.
    Forbidden = 33,
    /// The event carries a key of a customer that was forgotten (FORGET): it was not
    /// applied, so the person is not brought back.
    Suppressed = 34,
    /// SUBSCRIBE from a position the change stream no longer keeps (past its
    /// retention), or a subscriber that fell that far behind: subscribe again from
    /// `earliest` and rebuild what was missed from SEGMENT_MEMBERS.
    BeyondRetention = 35,
    /// SUBSCRIBE names a segment that is not on the change stream (`[triggers]
    /// stream`), or the server has no change stream (no data directory).
    NotStreamed = 36,
    /// A bad subscription name, a SUBSCRIBE from a position ahead of the stream, a
    /// second SUBSCRIBE on a connection, a request other than ACK and PING on a
    /// streaming connection, an ACK of a position the connection was not sent, or (in
    /// an ERROR frame that ends the stream) the name taken over by another connection.
    SubscriptionState = 37,
    /// REDEEM: no coupon has the code (never issued, its holder forgotten, or expired
    /// over 30 days ago), or no offer issues codes with its prefix.
    UnknownCoupon = 38,
    /// REDEEM: the code is not well formed, or its check character does not match: a
    /// character is mistyped or two are swapped.
    CouponMistyped = 39,
    CouponExpired = 40,
    /// REDEEM: the coupon was redeemed before; the message says when and on which
    /// channel.
    CouponAlreadyRedeemed = 41,
    /// REDEEM: the coupon is not valid on the channel asking.
    CouponWrongChannel = 42,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => MalformedFrame,
            2 => UnsupportedVersion,
            3 => UnknownOpcode,
            4 => FrameTooLarge,
            5 => HelloRequired,
            6 => InvalidUtf8,
            7 => NotImplemented,
            10 => BadJson,
            11 => UnknownEventType,
            12 => UnknownChannel,
            13 => BadKey,
            14 => BadProperty,
            15 => BadAttribute,
            16 => BadTimestamp,
            17 => FutureTimestamp,
            18 => UnknownSegment,
            19 => BadQuery,
            20 => Capacity,
            21 => UnknownOffer,
            22 => UnknownDecision,
            23 => BudgetSpent,
            24 => BadContext,
            25 => UnknownCustomer,
            26 => StorageFailed,
            27 => InvalidConfig,
            28 => ReloadRefused,
            29 => EventTooLarge,
            30 => ServerBusy,
            31 => Duplicate,
            32 => Unauthenticated,
            33 => Forbidden,
            34 => Suppressed,
            35 => BeyondRetention,
            36 => NotStreamed,
            37 => SubscriptionState,
            38 => UnknownCoupon,
            39 => CouponMistyped,
            40 => CouponExpired,
            41 => CouponAlreadyRedeemed,
            42 => CouponWrongChannel,
            _ => return None,
        })
    }

    /// The name used in docs, logs and metrics.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedFrame => "MALFORMED_FRAME",
            UnsupportedVersion => "UNSUPPORTED_VERSION",
            UnknownOpcode => "UNKNOWN_OPCODE",
            FrameTooLarge => "FRAME_TOO_LARGE",
            HelloRequired => "HELLO_REQUIRED",
            InvalidUtf8 => "INVALID_UTF8",
            NotImplemented => "NOT_IMPLEMENTED",
            BadJson => "BAD_JSON",
            UnknownEventType => "UNKNOWN_EVENT_TYPE",
            UnknownChannel => "UNKNOWN_CHANNEL",
            BadKey => "BAD_KEY",
            BadProperty => "BAD_PROPERTY",
            BadAttribute => "BAD_ATTRIBUTE",
            BadTimestamp => "BAD_TIMESTAMP",
            FutureTimestamp => "FUTURE_TIMESTAMP",
            UnknownSegment => "UNKNOWN_SEGMENT",
            BadQuery => "BAD_QUERY",
            Capacity => "CAPACITY",
            UnknownOffer => "UNKNOWN_OFFER",
            UnknownDecision => "UNKNOWN_DECISION",
            BudgetSpent => "BUDGET_SPENT",
            BadContext => "BAD_CONTEXT",
            UnknownCustomer => "UNKNOWN_CUSTOMER",
            StorageFailed => "STORAGE_FAILED",
            InvalidConfig => "INVALID_CONFIG",
            ReloadRefused => "RELOAD_REFUSED",
            EventTooLarge => "EVENT_TOO_LARGE",
            ServerBusy => "SERVER_BUSY",
            Duplicate => "DUPLICATE",
            Unauthenticated => "UNAUTHENTICATED",
            Forbidden => "FORBIDDEN",
            Suppressed => "SUPPRESSED",
            BeyondRetention => "BEYOND_RETENTION",
            NotStreamed => "NOT_STREAMED",
            SubscriptionState => "SUBSCRIPTION_STATE",
            UnknownCoupon => "UNKNOWN_COUPON",
            CouponMistyped => "COUPON_MISTYPED",
            CouponExpired => "COUPON_EXPIRED",
            CouponAlreadyRedeemed => "COUPON_ALREADY_REDEEMED",
            CouponWrongChannel => "COUPON_WRONG_CHANNEL",
        }
    }

    /// Whether sending the same request again later can succeed.
    pub fn retriable(self) -> bool {
        // Capacity can change without the request changing (a shard frees slots as
        // profiles merge), a busy server frees connections, and a failed log resumes
        // once its disk has room; every other error needs a corrected request.
        matches!(
            self,
            ErrorCode::Capacity | ErrorCode::ServerBusy | ErrorCode::StorageFailed
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}
