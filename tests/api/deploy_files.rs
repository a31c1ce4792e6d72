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
