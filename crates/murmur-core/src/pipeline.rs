//! The pipeline definition, written once and handed unchanged to the
//! backfill and the live runner.

use crate::error::PipelineError;
use crate::monoid::Monoid;
use crate::record::{Record, RecordCheck};
use crate::store::RowKey;
use crate::window::Window;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

type KeyOne<T> = Arc<dyn Fn(&T) -> String + Send + Sync>;
type KeyStr<T> = Arc<dyn for<'a> Fn(&'a T) -> &'a str + Send + Sync>;
type KeyMany<T> = Arc<dyn Fn(&T) -> Vec<String> + Send + Sync>;
type ValueFn<T, I> = Arc<dyn Fn(&T) -> I + Send + Sync>;

enum KeyFn<T> {
    Str(KeyStr<T>),
    One(KeyOne<T>),
    Many(KeyMany<T>),
}

struct Inner<T, M: Monoid> {
    name: String,
    keys: KeyFn<T>,
    value: ValueFn<T, M::Input>,
    monoid: M,
    window: Option<Window>,
}

/// What to aggregate: a name, the key function(s), the value function, the
/// monoid and an optional window.
///
/// A `Pipeline` is cheap to clone (an `Arc`); build it once and pass the same
/// value to the backfill and to the live runner.
///
/// ```
/// use murmur_core::{Pipeline, Window, monoid::Sum};
///
/// struct PageView { page: String, user: String }
///
/// let views = Pipeline::builder("page_views", Sum)
///     .key_by_many(|v: &PageView| vec![format!("page:{}", v.page), format!("user:{}", v.user)])
///     .value(|_| 1)
///     .window(Window::day())
///     .build()
///     .unwrap();
/// assert_eq!(views.name(), "page_views");
/// ```
pub struct Pipeline<T, M: Monoid> {
    inner: Arc<Inner<T, M>>,
}

impl<T, M: Monoid> Clone for Pipeline<T, M> {
    fn clone(&self) -> Self {
        Pipeline {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T, M: Monoid + fmt::Debug> fmt::Debug for Pipeline<T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.inner.name)
            .field("monoid", &self.inner.monoid)
            .field("window", &self.inner.window)
            .finish_non_exhaustive()
    }
}

impl<T, M: Monoid> Pipeline<T, M> {
    /// Starts a pipeline definition.
    pub fn builder(name: impl Into<String>, monoid: M) -> PipelineBuilder<T, M> {
        PipelineBuilder {
            name: name.into(),
            monoid,
            keys: None,
            value: None,
            window: None,
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The monoid.
    pub fn monoid(&self) -> &M {
        &self.inner.monoid
    }

    /// The window, if the pipeline is windowed.
    pub fn window(&self) -> Option<&Window> {
        self.inner.window.as_ref()
    }

    /// Appends the entity keys of `event` to `out`.
    pub fn keys_into(&self, event: &T, out: &mut Vec<String>) {
        match &self.inner.keys {
            KeyFn::Str(f) => out.push(f(event).to_owned()),
            KeyFn::One(f) => out.push(f(event)),
            KeyFn::Many(f) => out.extend(f(event)),
        }
    }

    /// The entity key of `event` when the pipeline has one key per event
    /// (borrowed from the event with [`key_by_str`](PipelineBuilder::key_by_str));
    /// `None` for [`key_by_many`](PipelineBuilder::key_by_many).
    pub fn single_key<'a>(&self, event: &'a T) -> Option<Cow<'a, str>> {
        match &self.inner.keys {
            KeyFn::Str(f) => Some(Cow::Borrowed(f(event))),
            KeyFn::One(f) => Some(Cow::Owned(f(event))),
            KeyFn::Many(_) => None,
        }
    }

    /// The monoid input of `event`.
    pub fn input(&self, event: &T) -> M::Input {
        (self.inner.value)(event)
    }

    /// Whether the pipeline can fold `record`: its event time lies in a
    /// bucket of the window and each of its entity keys is one a store can
    /// hold (not empty, at most [`RowKey::MAX_ENTITY_BYTES`]). What
    /// [`Aggregator::push`](crate::Aggregator::push) refuses, checked
    /// without folding. The answer does not depend on when it is asked (a
    /// chunk read again is judged the same), so retention plays no part:
    /// an event with a bad key is refused even if its bucket is past
    /// retention, where the Aggregator would drop it as expired.
    ///
    /// ```
    /// use murmur_core::{Pipeline, Record, Window, monoid::Sum};
    /// let p = Pipeline::builder("clicks", Sum)
    ///     .key_by(|user: &String| format!("user:{user}"))
    ///     .value(|_| 1)
    ///     .window(Window::day())
    ///     .build()
    ///     .unwrap();
    /// assert!(p.check(&Record::new("ann".to_owned(), 0)).is_ok());
    /// let long = "x".repeat(3000);
    /// assert!(p.check(&Record::new(long, 0)).unwrap_err().to_string().contains("is 3005 bytes"));
    /// assert!(p.check(&Record::new("ann".to_owned(), i64::MAX)).is_err());
    /// ```
    pub fn check(&self, record: &Record<T>) -> Result<(), PipelineError> {
        if let Some(w) = &self.inner.window {
            w.check_time(record.event_time_ms)?;
        }
        match &self.inner.keys {
            KeyFn::Str(f) => self.check_key(f(&record.value)),
            KeyFn::One(f) => self.check_key(&f(&record.value)),
            KeyFn::Many(f) => f(&record.value).iter().try_for_each(|k| self.check_key(k)),
        }
    }

    /// [`check`](Self::check) as a [`RecordCheck`] (the error's text is
    /// the reason), for a source to refuse a record the pipeline would
    /// refuse as a bad record of its own, before it reaches a lane.
    pub fn record_check(&self) -> RecordCheck<T>
    where
        T: 'static,
    {
        let pipeline = self.clone();
        Arc::new(move |record: &Record<T>| pipeline.check(record).map_err(|e| e.to_string()))
    }

    /// Refuses an entity key no store can hold.
    pub(crate) fn check_key(&self, entity: &str) -> Result<(), PipelineError> {
        let reason = if entity.is_empty() {
            "is empty".to_owned()
        } else if entity.len() > RowKey::MAX_ENTITY_BYTES {
            format!(
                "is {} bytes, more than the {} a row key holds",
                entity.len(),
                RowKey::MAX_ENTITY_BYTES
            )
        } else {
            return Ok(());
        };
        Err(PipelineError::InvalidKey {
            pipeline: self.name().to_owned(),
            entity: entity.chars().take(64).collect(),
            reason,
        })
    }

    /// Whether two handles are the very same definition.
    pub fn same_definition(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Builder for [`Pipeline`].
pub struct PipelineBuilder<T, M: Monoid> {
    name: String,
    monoid: M,
    keys: Option<KeyFn<T>>,
    value: Option<ValueFn<T, M::Input>>,
    window: Option<Window>,
}

impl<T, M: Monoid> PipelineBuilder<T, M> {
    /// One entity key per event.
    pub fn key_by(mut self, f: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        self.keys = Some(KeyFn::One(Arc::new(f)));
        self
    }

    /// One entity key per event, borrowed from the event (a field of it):
    /// no string is built per event.
    ///
    /// ```
    /// use murmur_core::{CountEvent, Pipeline, monoid::Sum};
    /// let p = Pipeline::builder("counts", Sum)
    ///     .key_by_str(|e: &CountEvent| &e.entity_id)
    ///     .value(|e| e.count)
    ///     .build()
    ///     .unwrap();
    /// let e = CountEvent { entity_id: "a".into(), count: 1, occurred_at_ms: 0, event_id: None };
    /// assert_eq!(p.single_key(&e).as_deref(), Some("a"));
    /// ```
    pub fn key_by_str(
        mut self,
        f: impl for<'a> Fn(&'a T) -> &'a str + Send + Sync + 'static,
    ) -> Self {
        self.keys = Some(KeyFn::Str(Arc::new(f)));
        self
    }

    /// Several entity keys per event (fan-out, e.g. `lifetime:<id>` and
    /// `hourly:<id>`); each key receives the event's value.
    pub fn key_by_many(mut self, f: impl Fn(&T) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.keys = Some(KeyFn::Many(Arc::new(f)));
        self
    }

    /// The monoid input of an event (for [`Count`](crate::monoid::Count):
    /// `|_| ()`).
    pub fn value(mut self, f: impl Fn(&T) -> M::Input + Send + Sync + 'static) -> Self {
        self.value = Some(Arc::new(f));
        self
    }

    /// Buckets values by event time.
    pub fn window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// Finishes the definition.
    pub fn build(self) -> Result<Pipeline<T, M>, PipelineError> {
        let missing = |what: &str| PipelineError::Definition {
            pipeline: self.name.clone(),
            reason: format!("no {what} function: call {what}_by / value before build"),
        };
        if self.name.is_empty() {
            return Err(PipelineError::Definition {
                pipeline: String::new(),
                reason: "the pipeline name is empty".into(),
            });
        }
        let keys = self.keys.ok_or_else(|| missing("key"))?;
        let value = self.value.ok_or_else(|| PipelineError::Definition {
            pipeline: self.name.clone(),
            reason: "no value function: call .value(..) before build".into(),
        })?;
        Ok(Pipeline {
            inner: Arc::new(Inner {
                name: self.name,
                keys,
                value,
                monoid: self.monoid,
                window: self.window,
            }),
        })
    }
}
