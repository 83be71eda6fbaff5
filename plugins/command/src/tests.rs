use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::Error;

fn pool() -> Pool {
    Pool {
        name: "lab".into(),
        template: vec![
            (
                "create".into(),
                r#"["lab-vm","create","{node}","--pool={pool}"]"#.into(),
            ),
            ("delete".into(), r#"["lab-vm","delete","{id}"]"#.into()),
            ("list".into(), r#"["lab-vm","list","{pool}"]"#.into()),
        ],
        secret: None,
    }
}

fn req() -> CreateRequest {
    CreateRequest {
        node: "lab-3".into(),
        user_data: "#!/bin/sh\necho join\n".into(),
    }
}

#[test]
fn create_runs_the_templates_argv_with_user_data_on_stdin_and_takes_the_last_line_as_id() {
    let b = Script::new().ok("lab-vm", "booting\nvm-0042\n\n");
    let id = CommandProvider::create(&b, &pool(), &req()).unwrap();
    assert_eq!(id, "vm-0042");
    let cmd = &b.commands()[0];
    assert_eq!(cmd.args, ["create", "lab-3", "--pool=lab"]);
    assert_eq!(cmd.stdin_text(), "#!/bin/sh\necho join\n");
    assert!(cmd.env.contains(&("CORRAL_NODE".into(), "lab-3".into())));
    b.assert_done();
}

#[test]
fn a_create_that_prints_nothing_is_named_by_its_node() {
    let b = Script::new().ok("lab-vm", "");
    assert_eq!(
        CommandProvider::create(&b, &pool(), &req()).unwrap(),
        "lab-3"
    );
}

#[test]
fn a_failing_program_is_a_backend_error_naming_it_and_what_it_said() {
    let b = Script::new().run("lab-vm", 3, "", "quota exceeded\n");
    let err = CommandProvider::create(&b, &pool(), &req()).unwrap_err();
    assert_eq!(
        err,
        ProviderError::Failed(Error::Backend(
            "lab-vm exited with status 3: quota exceeded".into()
        ))
    );
}

#[test]
fn list_parses_machines_and_keeps_unknown_states_native() {
    let b = Script::new().ok(
        "lab-vm",
        "# id node state created\nvm-1 lab-1 running 1700000000\nvm-2 lab-2 rebooting\n\n",
    );
    let m = CommandProvider::list(&b, &pool()).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0].id.as_str(), m[0].state, m[0].created_ms),
        ("vm-1", MachineState::Running, Some(1_700_000_000_000))
    );
    assert_eq!(
        (m[1].state, m[1].native_state.as_str()),
        (MachineState::Unknown, "rebooting")
    );
    assert_eq!(b.commands()[0].args, ["list", "lab"]);
}

#[test]
fn a_malformed_list_line_is_an_error_quoting_it() {
    let b = Script::new().ok("lab-vm", "vm-1 lab-1\n");
    let err = CommandProvider::list(&b, &pool()).unwrap_err();
    assert!(format!("{err:?}").contains("ID NODE STATE"), "{err:?}");
    let b = Script::new().ok("lab-vm", "vm-1 lab-1 running yesterday\n");
    assert!(
        format!("{:?}", CommandProvider::list(&b, &pool()).unwrap_err()).contains("Unix seconds")
    );
}

#[test]
fn status_finds_the_machine_in_list_or_answers_none() {
    let b = Script::new()
        .ok("lab-vm", "vm-1 lab-1 running\n")
        .ok("lab-vm", "vm-1 lab-1 running\n");
    assert_eq!(
        CommandProvider::status(&b, &pool(), "vm-1")
            .unwrap()
            .unwrap()
            .node,
        "lab-1"
    );
    assert_eq!(CommandProvider::status(&b, &pool(), "vm-9").unwrap(), None);
}

#[test]
fn delete_fills_the_id() {
    let b = Script::new().ok("lab-vm", "");
    CommandProvider::delete(&b, &pool(), "vm-7").unwrap();
    assert_eq!(b.commands()[0].args, ["delete", "vm-7"]);
}

#[test]
fn a_template_without_the_program_or_with_a_string_says_what_to_write() {
    let mut p = pool();
    p.template.retain(|(k, _)| k != "delete");
    let err = CommandProvider::delete(&Script::new(), &p, "vm-1").unwrap_err();
    assert!(
        format!("{err:?}").contains("[pools.lab.template]"),
        "{err:?}"
    );
    p.template
        .push(("delete".into(), "lab-vm delete {id}".into()));
    let err = CommandProvider::delete(&Script::new(), &p, "vm-1").unwrap_err();
    assert!(format!("{err:?}").contains("argument list"), "{err:?}");
}

#[test]
fn a_program_exiting_75_is_a_rate_limit_with_the_wait_it_names() {
    let b = Script::new().run("lab-vm", 75, "", "retry-after: 12\nquota busy\n");
    match CommandProvider::create(&b, &pool(), &req()).unwrap_err() {
        ProviderError::RateLimited(r) => {
            assert_eq!(r.retry_after_ms, 12_000);
            assert!(r.message.contains("lab-vm exited 75"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    let b = Script::new().run("lab-vm", 75, "", "busy\n");
    match CommandProvider::delete(&b, &pool(), "vm-1").unwrap_err() {
        ProviderError::RateLimited(r) => assert_eq!(r.retry_after_ms, 30_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hourly_billing_is_the_manifests_to_say() {
    assert!(!CommandProvider::info(&Script::new()).hourly_billing);
    let b = Script::new().config("hourly_billing", "true");
    assert!(CommandProvider::info(&b).hourly_billing);
}
