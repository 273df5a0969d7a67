//! The agent API's trust: only clients with a certificate from the node's CA get a stream; a
//! revoked agent is dropped at once and refused afterwards; agents renew their certificate
//! over the stream without a restart, and the superseded one stops working.

use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use pb::agent_admin_service_client::AgentAdminServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::admin_api::{reflected_v1, reflected_v1alpha};
use crate::fixture::admin::{authed, unique};
use crate::fixture::agent::{wait_agent_status, wait_connected, AgentProcess};
use crate::fixture::docker::docker_available;
use crate::fixture::node::{dirs, DevNode};
use crate::fixture::process::free_port;

/// A TLS channel to the agent port with an optional client identity.
async fn agent_channel(
    node_ca_pem: &str,
    agent_addr: &str,
    identity: Option<Identity>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(node_ca_pem))
        .domain_name("127.0.0.1");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(format!("https://{agent_addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Whether the agent API refuses this client: at the TLS handshake or when the stream opens.
async fn refused(ca: &str, addr: &str, identity: Option<Identity>) -> bool {
    match agent_channel(ca, addr, identity).await {
        Err(_) => true,
        Ok(channel) => try_connect(channel).await.is_err(),
    }
}

/// Opens the agent stream with a hello; the error code the control plane answers with.
async fn try_connect(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello::default())),
    };
    let mut stream = client
        .connect(tokio_stream::iter(vec![hello]))
        .await?
        .into_inner();
    // The stream stays open for an accepted agent; a refused one ends with an error.
    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
        Ok(Err(status)) => Err(status),
        _ => Ok(()),
    }
}

fn agent_addr(node: &DevNode) -> String {
    // The fixture's nodes for these tests listen on a known agent port.
    node.agent_addr.clone().expect("agent address")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_a_certificate_is_refused() {
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    assert!(
        refused(&ca, &agent_addr(&node), None).await,
        "a client without certificate reached the agent api"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_port_reflects_only_the_agent_service_in_both_versions() {
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    // A client certificate signed by the node's own CA: what the agent port asks at the
    // handshake (reflection needs no agent session).
    let pki = d.data.path().join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(&ca)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "grpcurl");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer, &ca_key).unwrap();
    let identity = Identity::from_pem(cert.pem(), key.serialize_pem());
    let channel = agent_channel(&ca, &agent_addr(&node), Some(identity))
        .await
        .unwrap();
    let agent_services = [
        "berth.v1.AgentService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    assert_eq!(reflected_v1(channel.clone()).await, agent_services);
    assert_eq!(reflected_v1alpha(channel).await, agent_services);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_a_certificate_from_another_ca_is_refused() {
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    // A CA of our own, and a client certificate it signs.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth CA");
    let other_ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "local");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &other_ca, &ca_key).unwrap();
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    let identity = Identity::from_pem(cert.pem(), key.serialize_pem());
    assert!(
        refused(&ca, &agent_addr(&node), Some(identity)).await,
        "a certificate from another CA reached the agent api"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_dropped_at_once_and_refused_afterwards() {
    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    let name = unique("revoked");
    let mut agent = AgentProcess::start(&node, &name, &[], d.logs.path()).await;
    wait_connected(&node, &name).await;
    // The certificate and its key, one file (tonic reads each from it).
    let cert = std::fs::read_to_string(agent.data_dir().join("agent.pem")).unwrap();
    let key = cert.clone();
    // With its valid certificate the stream is accepted.
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    let channel = agent_channel(
        &ca,
        &agent_addr(&node),
        Some(Identity::from_pem(&cert, &key)),
    )
    .await
    .unwrap();
    assert!(try_connect(channel).await.is_ok());
    wait_connected(&node, &name).await;

    let mut admin = AgentAdminServiceClient::new(node.channel().await);
    admin
        .revoke_agent(authed(
            pb::RevokeAgentRequest { name: name.clone() },
            &node.admin_token(),
        ))
        .await
        .unwrap();
    wait_agent_status(&node, &name, "revoked", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.log().contains("revoked") || agent.log().contains("PermissionDenied"),
        "agent not told: {}",
        agent.log()
    );
    let channel = agent_channel(
        &ca,
        &agent_addr(&node),
        Some(Identity::from_pem(&cert, &key)),
    )
    .await
    .unwrap();
    let refused = try_connect(channel).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    agent.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_renew_their_certificate_over_the_stream_without_a_restart() {
    let d = dirs();
    let agent_port = free_port();
    // 15 s certificates: the agent renews after 10 s.
    let node =
        DevNode::start_with_agent_api(&d, agent_port, &["--agent-cert-ttl", "15"], free_port());
    let name = unique("renew");
    let agent = AgentProcess::start(&node, &name, &[], d.logs.path()).await;
    wait_connected(&node, &name).await;
    let first = std::fs::read_to_string(agent.data_dir().join("agent.pem")).unwrap();
    let first_key = first.clone();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = std::fs::read_to_string(agent.data_dir().join("agent.pem")).unwrap_or_default();
        if !now.is_empty() && now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certificate not renewed: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The same process reconnects with the new certificate; the old one is refused.
    wait_connected(&node, &name).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_connected(&node, &name).await;
    assert!(
        agent.log().contains("certificate renewed"),
        "{}",
        agent.log()
    );
    let ca = std::fs::read_to_string(&node.ca_cert).unwrap();
    let old_key_cert = Identity::from_pem(&first, &first_key);
    assert!(
        refused(&ca, &format!("127.0.0.1:{agent_port}"), Some(old_key_cert)).await,
        "the superseded certificate still works"
    );
}

/// The enrollment token never has to be on `berth-agent`'s command line, which every user of
/// the host can read: the fixture enrolls from a file, and stdin works too.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_enrolls_with_its_token_from_a_file_or_stdin() {
    use std::process::{Command, Stdio};

    use crate::fixture::process::bin;

    if !docker_available() {
        return;
    }
    let d = dirs();
    let node = DevNode::start_with_agent_port(&d);
    let from_file = unique("file");
    let _agent = AgentProcess::start(&node, &from_file, &[], d.logs.path()).await;
    wait_connected(&node, &from_file).await;

    let from_stdin = unique("stdin");
    let created = AgentAdminServiceClient::new(node.channel().await)
        .create_enrollment_token(authed(
            pb::CreateEnrollmentTokenRequest {
                agent_name: from_stdin.clone(),
                labels: Default::default(),
                ttl_seconds: 600,
            },
            &node.admin_token(),
        ))
        .await
        .unwrap()
        .into_inner();
    let data = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(d.logs.path().join("agent-stdin.log")).unwrap();
    let mut child = Command::new(bin("berth-agent"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["--control-plane", &node.addr])
        .args(["--ca-fingerprint", &created.ca_fingerprint])
        .args(["--enroll-token-file", "-"])
        .env_remove("BERTH_ENROLL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, format!("{}\n", created.token).as_bytes()).unwrap();
    drop(stdin);
    wait_connected(&node, &from_stdin).await;
    let _ = child.kill();
    let _ = child.wait();

    let help = Command::new(bin("berth-agent"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--enroll-token-file") && help.contains("visible to other users"),
        "{help}"
    );
}
