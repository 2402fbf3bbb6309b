//! Task events for containerd (`/tasks/create`, `/tasks/exit`, …), sent in order from
//! one thread so that a slow containerd never holds up a request or a task's exit.

use std::sync::mpsc::{channel, Sender};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

type Event = (&'static str, Box<dyn MessageDyn + Send>);

#[derive(Clone)]
pub struct Events(Sender<Event>);

impl Events {
    /// Starts the sender thread; `publisher` reaches containerd's ttrpc socket.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, rx) = channel::<Event>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for (topic, event) in rx {
                    let event: Box<dyn MessageDyn> = event;
                    if let Err(e) = publisher.publish(Context::default(), topic, &namespace, event)
                    {
                        tracing::warn!("publishing {topic}: {e}");
                    }
                }
            })
            .expect("spawning the events thread");
        Self(tx)
    }

    pub fn send(&self, topic: &'static str, event: impl MessageDyn + 'static) {
        let _ = self.0.send((topic, Box::new(event)));
    }
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}
