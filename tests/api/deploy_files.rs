//! No Docker engine runs here, so the deployment files are checked as data: they parse and name
//! the right images, ports and commands, and the Kubernetes manifests are held against what the
//! app serves (routes, port) and reads (environment names, production settings).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use serde::Deserialize;
use serde_yaml::Value;

use crate::helpers::TestApp;

fn load(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{full} does not parse: {e}"))
}

#[test]
fn compose_runs_the_app_with_every_service_it_needs() {
    let compose = load("docker-compose.yml");
    let services = &compose["services"];
    let expectations = [
        ("postgres", "postgres:", "5432"),
        ("redis", "redis:", "6379"),
        ("rabbitmq", "rabbitmq:", "5672"),
        ("minio", "minio/minio", "9000"),
        ("mailpit", "axllent/mailpit", "1025"),
    ];
    for (name, image, port) in expectations {
        let service = &services[name];
        let image_name = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} image"));
        assert!(image_name.starts_with(image), "{name}: {image_name}");
        assert!(
            service["healthcheck"].is_mapping(),
            "{name} has no healthcheck"
        );
        let ports = serde_yaml::to_string(&service["ports"]).unwrap();
        assert!(ports.contains(port), "{name} does not publish {port}");
    }
    let app = &services["app"];
    assert!(app["build"].is_mapping() || app["build"].is_string());
    let env = serde_yaml::to_string(&app["environment"]).unwrap();
    for key in [
        "SHOP_ENV",
        "DATABASE_URL",
        "SHOP__AUTH__JWT_SECRET",
        "SHOP__CACHE__BACKEND",
        "SHOP__REDIS__URL",
        "SHOP__JOBS__BACKEND",
        "SHOP__AMQP__URL",
        "SHOP__STORAGE__BACKEND",
        "SHOP__S3__ENDPOINT",
        "SHOP__EMAIL__BACKEND",
        "SHOP__SMTP__URL",
    ] {
        assert!(env.contains(key), "app environment lacks {key}");
    }
    let depends = serde_yaml::to_string(&app["depends_on"]).unwrap();
    assert!(depends.contains("service_healthy"));
}

#[test]
fn compose_runs_prometheus_and_grafana_with_the_repo_s_monitoring_files() {
    let compose = load("docker-compose.yml");
    let services = &compose["services"];
    let root = env!("CARGO_MANIFEST_DIR");
    for (name, image, port, mounts) in [
        (
            "prometheus",
            "prom/prometheus:",
            "9090",
            &[
                "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml",
                "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml",
            ][..],
        ),
        (
            "grafana",
            "grafana/grafana:",
            "3000",
            &[
                "./deploy/grafana/provisioning/datasources:/etc/grafana/provisioning/datasources",
                "./deploy/grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards",
                "./deploy/grafana/dashboards:/var/lib/grafana/dashboards",
            ][..],
        ),
    ] {
        let service = &services[name];
        let image_name = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} image"));
        assert!(image_name.starts_with(image), "{name}: {image_name}");
        assert!(
            service["healthcheck"].is_mapping(),
            "{name} has no healthcheck"
        );
        let ports = serde_yaml::to_string(&service["ports"]).unwrap();
        assert!(ports.contains(port), "{name} does not publish {port}");
        let volumes: Vec<&str> = service["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} volumes"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for mount in mounts {
            assert!(
                volumes.iter().any(|v| v.starts_with(mount)),
                "{name} does not mount {mount}: {volumes:?}"
            );
        }
        // Every bind mount names a file or folder the repo has.
        for volume in volumes.iter().filter(|v| v.starts_with("./")) {
            let source = volume.split(':').next().unwrap();
            let path = std::path::Path::new(root).join(source);
            assert!(
                path.exists(),
                "{name} mounts {source}, which is not in the repo"
            );
        }
    }
    // Prometheus scrapes the app and loads the alert rules next to its configuration.
    let prometheus = load("deploy/prometheus/prometheus.yml");
    let text = serde_yaml::to_string(&prometheus).unwrap();
    assert!(
        text.contains("app:8080"),
        "prometheus.yml does not scrape the app"
    );
    assert!(text.contains("/metrics"));
    assert_eq!(prometheus["rule_files"][0].as_str(), Some("alerts.yml"));
    // Grafana's datasource is the uid the dashboard's panels name, and the dashboards provider
    // reads the folder the dashboard is mounted in.
    let datasource = load("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(
        datasource["datasources"][0]["uid"].as_str(),
        Some("prometheus")
    );
    assert_eq!(
        datasource["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    let provider = load("deploy/grafana/provisioning/dashboards/shop.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/dashboards/shop.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "prometheus",
                "{}",
                panel["title"]
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_offline_with_cargo_chef() {
    let path = format!("{}/Dockerfile", env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(path).unwrap();
    assert!(dockerfile.contains("cargo chef cook"));
    assert!(dockerfile.contains("SQLX_OFFLINE"));
    assert!(dockerfile.matches("FROM ").count() >= 3, "multi-stage");
    assert!(dockerfile.contains("EXPOSE 8080"));
}

#[test]
fn ci_runs_fmt_clippy_and_tests_against_service_containers() {
    let ci = load(".github/workflows/ci.yml");
    let text = serde_yaml::to_string(&ci).unwrap();
    for needle in [
        "cargo fmt --check",
        "clippy",
        "scripts/test",
        "postgres:",
        "redis:",
        "rabbitmq:",
    ] {
        assert!(text.contains(needle), "ci.yml lacks {needle}");
    }
    assert!(ci["jobs"].as_mapping().is_some_and(|jobs| jobs.len() >= 2));
}

// --- Kubernetes (deploy/k8s) ------------------------------------------------------------------

/// Every document of every `.yaml` file directly in `dir` (multi-document files split on `---`).
fn manifests(dir: &str) -> Vec<(String, Value)> {
    let full = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&full)
        .unwrap_or_else(|e| panic!("{full}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in format!("\n{text}").split("\n---") {
            let value: Value = serde_yaml::from_str(document)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            if !value.is_null() {
                documents.push((path.display().to_string(), value));
            }
        }
    }
    documents
}

fn the_one<'a>(documents: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<_> = documents
        .iter()
        .filter(|(_, doc)| doc["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/k8s");
    &found[0].1
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// Every environment variable name the shop reads: `SHOP_ENV`, `DATABASE_URL`, and
/// `SHOP__SECTION__KEY` for each field of [`shop::config::Settings`], found by walking the struct's
/// own `Deserialize` (so a renamed or removed key is gone from this list too).
fn env_names_the_shop_reads() -> BTreeSet<String> {
    let leaves = Rc::new(RefCell::new(BTreeSet::new()));
    shop::config::Settings::deserialize(tracer::Tracer {
        path: Vec::new(),
        leaves: leaves.clone(),
    })
    .expect("the tracer satisfies Settings");
    let mut names: BTreeSet<String> = leaves
        .borrow()
        .iter()
        .map(|path: &Vec<&str>| format!("SHOP__{}", path.join("__").to_uppercase()))
        .collect();
    names.insert("SHOP_ENV".into());
    names.insert("DATABASE_URL".into());
    names
}

/// A deserializer that answers every field with a neutral value and records the field paths.
mod tracer {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
    use serde::forward_to_deserialize_any;

    pub struct Tracer {
        pub path: Vec<&'static str>,
        pub leaves: Rc<RefCell<BTreeSet<Vec<&'static str>>>>,
    }

    impl Tracer {
        fn leaf(&self) {
            self.leaves.borrow_mut().insert(self.path.clone());
        }
    }

    impl<'de> de::Deserializer<'de> for Tracer {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_str("")
        }
        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_bool(false)
        }
        fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_u64(0)
        }
        fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_u64(visitor)
        }
        fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_f64(visitor)
        }
        fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_f64(0.0)
        }
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_seq(SeqDeserializer::new(std::iter::empty::<()>()))
        }
        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_map(MapDeserializer::new(std::iter::empty::<((), ())>()))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.leaf();
            visitor.visit_enum(variants[0].into_deserializer())
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_map(Fields {
                tracer: self,
                fields: fields.iter(),
                current: None,
            })
        }

        forward_to_deserialize_any! {
            i128 u128 char str string bytes byte_buf unit unit_struct tuple tuple_struct
            identifier ignored_any
        }
    }

    struct Fields {
        tracer: Tracer,
        fields: std::slice::Iter<'static, &'static str>,
        current: Option<&'static str>,
    }

    impl<'de> MapAccess<'de> for Fields {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(field) = self.fields.next() else {
                return Ok(None);
            };
            self.current = Some(field);
            seed.deserialize(field.into_deserializer()).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            let mut path = self.tracer.path.clone();
            path.extend(self.current.take());
            seed.deserialize(Tracer {
                path,
                leaves: self.tracer.leaves.clone(),
            })
        }
    }
}

#[test]
fn the_env_name_list_is_derived_from_the_settings_struct() {
    let names = env_names_the_shop_reads();
    // The tracer walked the real struct: every key of config/default.toml and every variable
    // .env.example documents (commented out or not) is among them, nested or optional ones too.
    for line in std::fs::read_to_string(format!("{}/.env.example", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .lines()
    {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some((name, _)) = line.split_once('=')
            && (name.starts_with("SHOP") || name == "DATABASE_URL")
        {
            assert!(
                names.contains(name),
                ".env.example names {name}, which the shop does not read"
            );
        }
    }
    for name in [
        "SHOP__SERVER__PORT",
        "SHOP__S3__BUCKET",
        "SHOP__STRIPE__WEBHOOK_SECRET",
        "SHOP__BOOTSTRAP__ADMIN_PASSWORD",
        "SHOP__RATE_LIMIT__ENABLED",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(!names.contains("SHOP__S3__BUKET"));
}

/// The environment the manifests give the shop's container: the ConfigMap it loads with `envFrom`,
/// then its `env` entries, each value taken from the example Secret through its `secretKeyRef`.
fn container_env(
    container: &Value,
    config_map: &Value,
    secret: &Value,
) -> config::Map<String, String> {
    let mut env = config::Map::new();
    let sources = container["envFrom"].as_sequence().expect("envFrom");
    assert_eq!(sources.len(), 1, "the ConfigMap is the one envFrom source");
    assert_eq!(
        sources[0]["configMapRef"]["name"],
        config_map["metadata"]["name"]
    );
    for (name, value) in config_map["data"].as_mapping().expect("ConfigMap data") {
        env.insert(text(name).to_owned(), text(value).to_owned());
    }
    for entry in container["env"].as_sequence().expect("env") {
        let name = text(&entry["name"]);
        assert!(
            entry.get("value").is_none(),
            "{name} is set inline; the Deployment's env holds only secret references"
        );
        let reference = &entry["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], secret["metadata"]["name"], "{name}");
        let key = text(&reference["key"]);
        let value = text(&secret["stringData"][key]);
        assert!(
            value.contains("PLACEHOLDER"),
            "the example Secret's {key} is not marked as a placeholder"
        );
        assert!(
            env.insert(name.to_owned(), value.to_owned()).is_none(),
            "{name} is both in the ConfigMap and a secret"
        );
    }
    env
}

/// `port` of a probe or Service as the container port number it names.
fn port_number(port: &Value, container: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = text(port);
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[tokio::test]
async fn the_kubernetes_manifests_match_what_the_app_serves_and_reads() {
    let documents = manifests("deploy/k8s");
    assert!(
        documents.iter().all(|(_, doc)| doc["kind"] != "Secret"),
        "deploy/k8s holds no Secret: values are referenced, never inlined"
    );
    let deployment = the_one(&documents, "Deployment");
    let job = the_one(&documents, "Job");
    let service = the_one(&documents, "Service");
    let config_map = the_one(&documents, "ConfigMap");
    let examples = manifests("deploy/k8s/examples");
    let secret = the_one(&examples, "Secret");
    assert!(secret["data"].is_null(), "placeholders go in stringData");

    // One owner of the actor tree (issue 14, item 6): never two pods at once.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(1));
    assert_eq!(spec["strategy"]["type"], "Recreate");

    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert!(text(&container["image"]).starts_with("ghcr.io/"));
    assert_eq!(
        container["args"],
        serde_yaml::from_str::<Value>("[serve]").unwrap()
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "no {kind}.{resource}"
            );
        }
    }

    // What the shop makes of that environment: the production profile loads and validates, so
    // every value parses (backends, currency, Stripe secrets present) ...
    let env = container_env(container, config_map, secret);
    assert_eq!(env["SHOP_ENV"], "production");
    let settings =
        shop::config::Settings::load_profile_with_env(shop::config::Profile::Production, &env)
            .unwrap_or_else(|e| panic!("the manifests' environment is refused: {e}"));
    // ... and every name is one it reads (a typo is silently ignored by the app, not here).
    let known = env_names_the_shop_reads();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "{name} is not a variable the shop reads"
        );
    }

    // Ports: the container port is the production server.port; probes and Service aim at it.
    let http = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(http, u64::from(settings.server.port));
    let dockerfile =
        std::fs::read_to_string(format!("{}/Dockerfile", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {http}")));
    assert!(dockerfile.contains(&format!("SHOP__SERVER__PORT={http}")));
    let mut probed = Vec::new();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(port_number(&get["port"], container), http, "{probe} port");
        probed.push((probe, text(&get["path"]).to_owned()));
    }
    assert_eq!(probed[1].1, "/health/live");
    assert_eq!(probed[2].1, "/health/ready");
    let pod_labels = &spec["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[key], value,
            "the Service selects the shop's pods"
        );
    }
    for port in service["spec"]["ports"].as_sequence().unwrap() {
        assert_eq!(port_number(&port["targetPort"], container), http);
    }

    // The drain fits: preStop pause + in-flight requests' grace < the kubelet's deadline.
    let pause: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("preStop sleep seconds");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pause + settings.server.shutdown_grace_secs,
        "terminationGracePeriodSeconds {grace} <= {pause} s + shutdown_grace_secs {}",
        settings.server.shutdown_grace_secs
    );

    // The migration Job: same image and environment, runs `shop migrate`, never retried forever.
    let job_pod = &job["spec"]["template"]["spec"];
    let job_container = &job_pod["containers"][0];
    assert_eq!(job_container["image"], container["image"]);
    assert_eq!(
        job_container["args"],
        serde_yaml::from_str::<Value>("[migrate]").unwrap()
    );
    assert_eq!(container_env(job_container, config_map, secret), env);
    assert!(matches!(
        job_pod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));

    // The probed paths are routes the shop serves, answering 200 when it is up.
    let app = TestApp::spawn().await;
    for (probe, path) in probed {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200, "{probe} {path}");
    }
}

#[test]
fn a_version_tag_publishes_the_image_to_ghcr() {
    let ci = load(".github/workflows/ci.yml");
    let tags = serde_yaml::to_string(&ci["on"]["push"]["tags"]).unwrap();
    assert!(
        tags.contains("v*"),
        "ci.yml does not run on tags v*: {tags}"
    );
    let image = &ci["jobs"]["image"];
    assert_eq!(image["permissions"]["packages"], "write");
    let steps = image["steps"].as_sequence().unwrap();
    let step = |action: &str| {
        steps
            .iter()
            .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(action)))
            .unwrap_or_else(|| panic!("no {action} step"))
    };
    let login = step("docker/login-action@");
    assert_eq!(login["with"]["registry"], "ghcr.io");
    let build = step("docker/build-push-action@");
    let push = text(&build["with"]["push"]);
    assert!(
        push.contains("startsWith(github.ref, 'refs/tags/"),
        "pushes only on tags: {push}"
    );
    let meta = step("docker/metadata-action@");
    assert!(text(&meta["with"]["images"]).starts_with("ghcr.io/"));
    assert!(text(&meta["with"]["tags"]).contains("type=ref,event=tag"));
    assert!(text(&build["with"]["tags"]).contains("steps.meta.outputs.tags"));
}
