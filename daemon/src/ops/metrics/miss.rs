//! The deadline-miss causes: the label values of `reflexd_deadline_misses_total`, and the
//! cause the journal records with a fallback answer.

/// Why an event was answered by the fallback instead of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MissCause {
    /// The scheduler queue was full when the event arrived.
    QueueFull,
    /// On arrival, the expected inference time plus the margin already overran the deadline.
    CannotMakeIt,
    /// The event waited in the queue until it could no longer make it.
    ExpiredInQueue,
    /// The model answered after the deadline; the fallback had already been sent.
    ModelTooSlow,
    /// The model failed (error or panic) on this event.
    ModelError,
    /// On arrival, the fallbacks already pending left the deadline timer no time to answer
    /// this one too by its deadline ((`pipeline::infer::schedule::timer_can_take`)): a burst larger than the timer
    /// can answer alone, so the thread that took it in answers it at once.
    FallbackBacklog,
}

impl MissCause {
    /// Every cause, for registering metrics label values up front.
    pub const ALL: [MissCause; 6] = [
        MissCause::QueueFull,
        MissCause::CannotMakeIt,
        MissCause::ExpiredInQueue,
        MissCause::ModelTooSlow,
        MissCause::ModelError,
        MissCause::FallbackBacklog,
    ];

    /// A short stable name, fit for a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            MissCause::QueueFull => "queue_full",
            MissCause::CannotMakeIt => "cannot_make_it",
            MissCause::ExpiredInQueue => "expired_in_queue",
            MissCause::ModelTooSlow => "model_too_slow",
            MissCause::ModelError => "model_error",
            MissCause::FallbackBacklog => "fallback_backlog",
        }
    }
}

impl std::fmt::Display for MissCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
