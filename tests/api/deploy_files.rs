//! No Docker engine runs here, so the deployment files are checked as data: they parse and name
//! the right images, ports and commands.

use serde_yaml::Value;

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
