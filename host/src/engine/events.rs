//! Following Docker live: one task reads the engine's event stream and tells
//! the daemon what to reconcile. It owns the reconnect logic: when the engine
//! goes away (restart, Docker Desktop quit) it retries with capped backoff,
//! logs once per state change, and announces the engine's return so the
//! daemon runs a full reconcile.

use std::collections::HashMap;

use backon::BackoffBuilder;
use bollard::models::EventMessageTypeEnum;
use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::agent::LABEL_MANAGED;
use crate::engine::{ENGINE_BACKOFF, ENGINE_BACKOFF_MAX};

/// Label kind puts on its node containers.
pub const KIND_CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";

/// What changed, from the daemon's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A network was created or removed: re-plan routes.
    Networks,
    /// Our agent container changed state (`action` = Docker's event action).
    Agent { action: String },
    /// A kind node container started, stopped or went away.
    KindNode { cluster: String, action: String },
    /// The engine stopped answering.
    DockerDown { error: String },
    /// The engine answers again (or for the first time): reconcile everything.
    DockerUp,
    /// The event stream was re-subscribed without knowing where the last
    /// one ended (no event seen yet): reconcile everything, something may
    /// have been missed.
    Resync,
}

/// Pure: maps one event to a trigger, ignoring what we do not route on.
pub fn classify(
    typ: Option<EventMessageTypeEnum>,
    action: &str,
    attributes: &HashMap<String, String>,
) -> Option<Trigger> {
    match typ? {
        EventMessageTypeEnum::NETWORK => match action {
            "create" | "destroy" | "remove" => Some(Trigger::Networks),
            _ => None,
        },
        EventMessageTypeEnum::CONTAINER => {
            let action = action.split(':').next().unwrap_or(action);
            // `kill` is left out: a kill that stops the container is followed
            // by `die`, and our own SIGUSR1 nudge is a kill too.
            if !matches!(action, "start" | "die" | "destroy" | "stop" | "restart") {
                return None;
            }
            if attributes.get(LABEL_MANAGED).map(String::as_str) == Some("true") {
                Some(Trigger::Agent {
                    action: action.to_owned(),
                })
            } else {
                attributes
                    .get(KIND_CLUSTER_LABEL)
                    .map(|cluster| Trigger::KindNode {
                        cluster: cluster.clone(),
                        action: action.to_owned(),
                    })
            }
        }
        _ => None,
    }
}

/// Runs until the receiver is dropped.
pub async fn follow(docker: Docker, tx: mpsc::Sender<Trigger>) {
    let filters = HashMap::from([(
        "type".to_owned(),
        vec!["network".to_owned(), "container".to_owned()],
    )]);
    let mut up = true; // the daemon connected before starting us
    let mut backoff = ENGINE_BACKOFF.build();
    // The engine's time of the last event seen: a new subscription starts
    // there, so nothing that happened while re-subscribing is lost.
    let mut last_seen: Option<i64> = None;
    let mut first = true;
    loop {
        let since = last_seen.map(since_param);
        if !first && since.is_none() && tx.send(Trigger::Resync).await.is_err() {
            return;
        }
        first = false;
        let mut stream = docker.events(Some(EventsOptions {
            filters: Some(filters.clone()),
            since,
            ..Default::default()
        }));
        // The stream only yields on events; ping so a dead engine is noticed
        // (and a returning one announced) promptly.
        let healthy = docker.ping().await.is_ok();
        if healthy && !up {
            tracing::info!("Docker is reachable again");
            up = true;
            backoff = ENGINE_BACKOFF.build();
            if tx.send(Trigger::DockerUp).await.is_err() {
                return;
            }
        }
        if healthy {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        if let Some(t) = event.time_nano.filter(|t| *t > 0) {
                            last_seen = Some(last_seen.map_or(t, |l| l.max(t)));
                        }
                        let attributes = event
                            .actor
                            .as_ref()
                            .and_then(|a| a.attributes.clone())
                            .unwrap_or_default();
                        let action = event.action.clone().unwrap_or_default();
                        if let Some(trigger) = classify(event.typ, &action, &attributes) {
                            tracing::debug!(?trigger, "docker event");
                            if tx.send(trigger).await.is_err() {
                                return;
                            }
                        }
                        backoff = ENGINE_BACKOFF.build();
                    }
                    Err(error) => {
                        tracing::debug!(%error, "docker event stream ended");
                        break;
                    }
                }
            }
        }
        // Stream over: distinguish a closed stream from a dead engine.
        match docker.ping().await {
            Ok(_) => continue,
            Err(error) => {
                if up {
                    tracing::warn!(%error, "Docker is unreachable; retrying with backoff");
                    up = false;
                    if tx
                        .send(Trigger::DockerDown {
                            error: error.to_string(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(backoff.next().unwrap_or(ENGINE_BACKOFF_MAX)).await;
            }
        }
    }
}

/// Docker's `since` for an event time in Unix nanoseconds: `secs.nanos`
/// (inclusive: the last event seen comes again, which changes nothing).
fn since_param(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_new_subscription_starts_at_the_last_event_seen() {
        assert_eq!(
            since_param(1_700_000_000_123_456_789),
            "1700000000.123456789"
        );
        assert_eq!(
            since_param(1_700_000_000_000_000_007),
            "1700000000.000000007"
        );
    }

    #[test]
    fn network_lifecycle_triggers_a_route_sync() {
        let none = HashMap::new();
        assert_eq!(
            classify(Some(EventMessageTypeEnum::NETWORK), "create", &none),
            Some(Trigger::Networks)
        );
        assert_eq!(
            classify(Some(EventMessageTypeEnum::NETWORK), "destroy", &none),
            Some(Trigger::Networks)
        );
        assert_eq!(
            classify(Some(EventMessageTypeEnum::NETWORK), "connect", &none),
            None
        );
    }

    #[test]
    fn only_our_agent_and_kind_nodes_matter_among_containers() {
        let agent = attrs(&[(LABEL_MANAGED, "true")]);
        assert_eq!(
            classify(Some(EventMessageTypeEnum::CONTAINER), "die", &agent),
            Some(Trigger::Agent {
                action: "die".into()
            })
        );
        let node = attrs(&[(KIND_CLUSTER_LABEL, "dev")]);
        assert_eq!(
            classify(Some(EventMessageTypeEnum::CONTAINER), "start", &node),
            Some(Trigger::KindNode {
                cluster: "dev".into(),
                action: "start".into()
            })
        );
        let other = attrs(&[("app", "web")]);
        assert_eq!(
            classify(Some(EventMessageTypeEnum::CONTAINER), "start", &other),
            None
        );
        assert_eq!(
            classify(
                Some(EventMessageTypeEnum::CONTAINER),
                "exec_start: sh",
                &agent
            ),
            None
        );
        assert_eq!(
            classify(Some(EventMessageTypeEnum::CONTAINER), "kill", &agent),
            None
        );
        assert_eq!(
            classify(Some(EventMessageTypeEnum::IMAGE), "pull", &agent),
            None
        );
    }

    use proptest::prelude::*;

    fn event_type() -> impl Strategy<Value = Option<EventMessageTypeEnum>> {
        use EventMessageTypeEnum::*;
        prop::option::of(prop::sample::select(vec![
            EMPTY, BUILDER, CONFIG, CONTAINER, DAEMON, IMAGE, NETWORK, NODE, PLUGIN, SECRET,
            SERVICE, VOLUME,
        ]))
    }

    const LIFECYCLE: [&str; 5] = ["start", "die", "destroy", "stop", "restart"];

    /// Docker's actions, with and without a `: detail` suffix, and anything.
    fn action() -> impl Strategy<Value = String> {
        let known = prop::sample::select(vec![
            "create",
            "destroy",
            "remove",
            "connect",
            "disconnect",
            "start",
            "die",
            "stop",
            "restart",
            "kill",
            "exec_start",
            "exec_create",
            "health_status",
            "pull",
            "",
        ]);
        prop_oneof![
            3 => known.clone().prop_map(String::from),
            1 => (known, ".{0,12}").prop_map(|(a, rest)| format!("{a}:{rest}")),
            1 => ".{0,16}",
        ]
    }

    fn attributes() -> impl Strategy<Value = HashMap<String, String>> {
        let key = prop_oneof![
            Just(LABEL_MANAGED.to_owned()),
            Just(KIND_CLUSTER_LABEL.to_owned()),
            Just("name".to_owned()),
            ".{0,12}",
        ];
        let value = prop_oneof![
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("dev".to_owned()),
            ".{0,12}",
        ];
        prop::collection::hash_map(key, value, 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn only_network_lifecycle_and_labelled_containers_trigger(
            typ in event_type(),
            action in action(),
            attributes in attributes(),
        ) {
            let trigger = classify(typ, &action, &attributes);
            let base = action.split(':').next().unwrap_or(&action);
            let managed = attributes.get(LABEL_MANAGED).map(String::as_str) == Some("true");
            let cluster = attributes.get(KIND_CLUSTER_LABEL);
            match trigger {
                None => {
                    let network = typ == Some(EventMessageTypeEnum::NETWORK)
                        && ["create", "destroy", "remove"].contains(&action.as_str());
                    let labelled = typ == Some(EventMessageTypeEnum::CONTAINER)
                        && LIFECYCLE.contains(&base)
                        && (managed || cluster.is_some());
                    prop_assert!(!network && !labelled, "missed {typ:?} {action:?} {attributes:?}");
                }
                Some(Trigger::Networks) => {
                    prop_assert_eq!(typ, Some(EventMessageTypeEnum::NETWORK));
                    prop_assert!(["create", "destroy", "remove"].contains(&action.as_str()));
                }
                Some(Trigger::Agent { action: got }) => {
                    prop_assert_eq!(typ, Some(EventMessageTypeEnum::CONTAINER));
                    prop_assert!(managed);
                    prop_assert!(LIFECYCLE.contains(&base));
                    prop_assert_eq!(got, base);
                }
                Some(Trigger::KindNode { cluster: got_cluster, action: got }) => {
                    prop_assert_eq!(typ, Some(EventMessageTypeEnum::CONTAINER));
                    prop_assert!(!managed, "the agent label wins");
                    prop_assert_eq!(Some(&got_cluster), cluster);
                    prop_assert!(LIFECYCLE.contains(&base));
                    prop_assert_eq!(got, base);
                }
                Some(other) => prop_assert!(false, "classify made {other:?}"),
            }
        }

        #[test]
        fn lifecycle_of_labelled_containers_always_triggers(
            base in prop::sample::select(LIFECYCLE.to_vec()),
            detail in prop::option::of(".{0,12}"),
            agent in any::<bool>(),
            mut attributes in attributes(),
        ) {
            let action = match &detail {
                Some(d) => format!("{base}:{d}"),
                None => base.to_owned(),
            };
            if agent {
                attributes.insert(LABEL_MANAGED.into(), "true".into());
            } else {
                attributes.remove(LABEL_MANAGED);
                attributes.insert(KIND_CLUSTER_LABEL.into(), "dev".into());
            }
            let expected = if agent {
                Trigger::Agent { action: base.into() }
            } else {
                Trigger::KindNode { cluster: "dev".into(), action: base.into() }
            };
            prop_assert_eq!(
                classify(Some(EventMessageTypeEnum::CONTAINER), &action, &attributes),
                Some(expected)
            );
        }
    }
}
