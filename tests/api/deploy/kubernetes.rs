//! `deploy/kubernetes/`: one manifest per kind, applied with
//! `kubectl apply -k` (the Secret is created by hand, see secret.yaml).

use serde_norway::Value;

use super::*;

const DIR: &str = "deploy/kubernetes";

fn manifest(file: &str) -> Value {
    yaml(&format!("{DIR}/{file}"))
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .unwrap()
        .iter()
        .find(|item| item["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{name} in {list:?}"))
}

/// `selector` picks the pods labelled `labels`: each of its labels is theirs.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn deploy_kubernetes_kustomization_lists_every_manifest_but_the_secret() {
    let listed: BTreeSet<String> = manifest("kustomization.yaml")["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(repo_path(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .filter(|f| f != "kustomization.yaml" && f != "secret.yaml")
        .collect();
    assert_eq!(listed, files);
    // Applying the rest never replaces a real secret with the placeholder.
    let secret = manifest("secret.yaml");
    assert_eq!(secret["kind"], "Secret");
    for value in secret["stringData"].as_mapping().unwrap().values() {
        assert!(value.as_str().unwrap().contains("PLACEHOLDER"));
    }
}

#[test]
fn deploy_kubernetes_pods_drain_before_they_are_killed() {
    let deployment = manifest("deployment.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let herald = named(&pod["containers"], "herald");
    let config = &manifest("configmap.yaml")["data"];

    // preStop pauses (the endpoint goes before SIGTERM comes), then herald
    // drains; SIGKILL comes after the grace period.
    let pre_stop = herald["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("a preStop command");
    assert_eq!(pre_stop[0], "sleep");
    let pause: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    assert!(pause > 0);
    let drain = duration(config["HERALD_DRAIN"].as_str().unwrap_or(DEFAULT_DRAIN));
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace > Duration::from_secs(pause) + longest_stop(drain),
        "grace {grace:?}, preStop {pause} s, drain {drain:?}"
    );

    // Ready means /readyz (it fails at once when the drain begins); alive
    // means /healthz, so a lost database restarts nothing.
    let probe = |name: &str| &herald[name]["httpGet"];
    assert_eq!(probe("readinessProbe")["path"], "/readyz");
    assert_eq!(probe("livenessProbe")["path"], "/healthz");
    assert_eq!(
        named(
            &herald["ports"],
            probe("readinessProbe")["port"].as_str().unwrap()
        )["containerPort"],
        8080
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(herald["resources"]["requests"].is_mapping());
    assert!(herald["resources"]["limits"]["memory"].is_string());
}

#[test]
fn deploy_kubernetes_pods_run_with_tokens_from_the_mounted_secret() {
    let deployment = manifest("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let herald = named(&pod["containers"], "herald");
    let secret = manifest("secret.yaml");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let config = manifest("configmap.yaml");

    // HERALD_JWT_SECRET_FILE is a file of the Secret, mounted read-only.
    let file = named(&herald["env"], "HERALD_JWT_SECRET_FILE")["value"]
        .as_str()
        .unwrap();
    let mount = herald["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{file} is in no mounted volume"));
    assert_eq!(mount["readOnly"], true);
    let volume = &named(&pod["volumes"], mount["name"].as_str().unwrap())["secret"];
    assert_eq!(volume["secretName"], secret_name);
    let path = &file[mount["mountPath"].as_str().unwrap().len() + 1..];
    let item = volume["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|item| item["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("{path} in {volume:?}"));
    let keys = secret["stringData"].as_mapping().unwrap();
    assert!(keys.contains_key(&item["key"]), "{item:?}");
    // The database URL (it has a password) comes from the Secret too.
    let database = &named(&herald["env"], "DATABASE_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(database["name"], secret_name);
    assert!(keys.contains_key(&database["key"]));

    // The rest of the settings come from the ConfigMap; tokens are on.
    let config_name = config["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        herald["envFrom"][0]["configMapRef"]["name"].as_str(),
        Some(config_name)
    );
    let settings = config["data"].as_mapping().unwrap();
    let env_names = herald["env"].as_sequence().unwrap().iter();
    assert_known_variables(
        DIR,
        settings
            .keys()
            .chain(env_names.map(|e| &e["name"]))
            .filter_map(Value::as_str),
    );
    assert_eq!(config["data"]["HERALD_LISTEN"], "0.0.0.0:8080");
    assert!(config["data"]["HERALD_JWT_AUDIENCE"].is_string());
    assert!(config["data"]["HERALD_ALLOW_ANONYMOUS"].is_null());
}

#[test]
fn deploy_kubernetes_pods_run_unprivileged() {
    let deployment = manifest("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let herald = named(&pod["containers"], "herald");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let container = &herald["securityContext"];
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn deploy_kubernetes_service_and_budget_select_the_deployments_pods() {
    let deployment = manifest("deployment.yaml");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        labels
    ));

    let pdb = manifest("pdb.yaml");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    let service = manifest("service.yaml");
    assert_eq!(service["kind"], "Service");
    assert!(selects(&service["spec"]["selector"], labels));
    // It sends traffic to the port the probes check.
    let herald = named(
        &deployment["spec"]["template"]["spec"]["containers"],
        "herald",
    );
    for port in service["spec"]["ports"].as_sequence().unwrap() {
        named(&herald["ports"], port["targetPort"].as_str().unwrap());
    }
}
