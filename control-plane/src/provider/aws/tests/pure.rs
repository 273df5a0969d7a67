//! The parts that need no server: settings, names, answers and errors.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;

use super::super::answer::{collect_batch, secret_text, AwsError, Listed};
use super::super::{AwsConfig, AwsSource};
use super::base64_of;
use crate::error::ErrorCode;
use crate::provider::http::Answer;
use crate::provider::{config_json, map_names, FetchedSecret, ProviderConfig as _, ProviderType};

fn config(pairs: &[(&str, &str)]) -> crate::error::Result<String> {
    let settings: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config_json(
        ProviderType::AwsSecretsManager,
        &settings,
        &SecretString::from("secret".to_string()),
    )
}

#[test]
fn settings_are_checked_and_the_endpoint_defaults_to_the_region() {
    let json = config(&[("region", "eu-central-1"), ("access_key_id", "AKIAEXAMPLE")]).unwrap();
    let stored: AwsConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(
        stored.endpoint(),
        "https://secretsmanager.eu-central-1.amazonaws.com"
    );
    let china = AwsConfig {
        region: "cn-north-1".into(),
        ..stored.clone()
    };
    assert_eq!(
        china.endpoint(),
        "https://secretsmanager.cn-north-1.amazonaws.com.cn"
    );
    for (pairs, expected) in [
        (vec![("access_key_id", "AKIA1")], "region"),
        (
            vec![("region", "Eu Central"), ("access_key_id", "AKIA1")],
            "--region",
        ),
        (vec![("region", "eu-central-1")], "access_key_id"),
        (
            vec![("region", "eu-central-1"), ("access_key_id", "AKIA/1")],
            "--access-key-id",
        ),
        (
            vec![
                ("region", "eu-central-1"),
                ("access_key_id", "AKIA1"),
                ("prefix", "!prod/"),
            ],
            "--prefix",
        ),
        (
            vec![
                ("region", "eu-central-1"),
                ("access_key_id", "AKIA1"),
                ("endpoint", "ftp://x"),
            ],
            "https://",
        ),
        (
            vec![
                ("region", "eu-central-1"),
                ("access_key_id", "AKIA1"),
                ("secret_access_key", "oops"),
            ],
            "secret_access_key",
        ),
    ] {
        let e = config(&pairs).unwrap_err().to_string();
        assert!(e.contains(expected), "{pairs:?}: {e}");
    }
    let empty = stored
        .validate(&SecretString::from(" \n".to_string()))
        .unwrap_err()
        .to_string();
    assert!(empty.contains("secret access key is empty"), "{empty}");
}

#[test]
fn names_lose_the_prefix_then_follow_the_documented_rule() {
    let config = AwsConfig {
        region: "eu-central-1".into(),
        endpoint: Some("http://127.0.0.1:1".into()),
        prefix: Some("myapp/prod/".into()),
        access_key_id: "AKIA1".into(),
        ca_cert: None,
    };
    let source = AwsSource::new(
        config,
        SecretString::from("k".to_string()),
        Duration::from_secs(1),
    )
    .unwrap();
    let fetched: Vec<FetchedSecret> = [
        "myapp/prod/DATABASE_URL",
        "myapp/prod/stripe/api-key",
        "myapp/prod/v1.2",
    ]
    .iter()
    .map(|name| {
        source.fetched(
            Listed {
                arn: format!("arn:aws:secretsmanager:eu-central-1:1:secret:{name}-AbCdEf"),
                name: name.to_string(),
            },
            SecretString::from("v".to_string()),
        )
    })
    .collect();
    let names: Vec<String> = map_names(fetched).unwrap().into_keys().collect();
    assert_eq!(names, vec!["DATABASE_URL", "stripe_api_key", "v1_2"]);
}

fn listed(names: &[&str]) -> Vec<Listed> {
    names
        .iter()
        .map(|n| Listed {
            arn: format!("arn:{n}"),
            name: n.to_string(),
        })
        .collect()
}

/// The answer shape of AWS's BatchGetSecretValue reference, with per-secret errors.
#[test]
fn a_batch_answer_gives_values_skips_gone_secrets_and_fails_on_other_errors() {
    let requested = listed(&["app/A", "app/B", "app/GONE"]);
    let page = json!({
        "SecretValues": [
            {"ARN": "arn:app/A", "Name": "app/A", "SecretString": "a", "VersionStages": ["AWSCURRENT"]},
            {"ARN": "arn:app/B", "Name": "app/B", "SecretBinary": base64_of(b"b-bytes")},
        ],
        "Errors": [
            {"SecretId": "arn:app/GONE", "ErrorCode": "ResourceNotFoundException", "Message": "Secrets Manager can't find the specified secret."},
        ],
    });
    let mut values = BTreeMap::new();
    collect_batch(&page, &requested, &mut values).unwrap();
    let shown: Vec<(String, Option<String>)> = values
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.expose_secret().to_string())))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("arn:app/A".to_string(), Some("a".to_string())),
            ("arn:app/B".to_string(), Some("b-bytes".to_string())),
            ("arn:app/GONE".to_string(), None),
        ]
    );

    let denied = json!({
        "SecretValues": [],
        "Errors": [{"SecretId": "arn:app/B", "ErrorCode": "AccessDeniedException", "Message": "not authorized"}],
    });
    let e = collect_batch(&denied, &requested, &mut BTreeMap::new()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
    assert!(e.to_string().contains("\"app/B\""), "{e}");

    let stranger = json!({"SecretValues": [{"ARN": "arn:other", "SecretString": "x"}]});
    let e = collect_batch(&stranger, &requested, &mut BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("not asked for"), "{e}");
}

#[test]
fn binary_values_are_text_when_utf8_and_refused_by_name_otherwise() {
    let text = secret_text(
        "GetSecretValue",
        "app/PEM",
        &json!({"SecretBinary": base64_of("pem ✓".as_bytes())}),
    )
    .unwrap();
    assert_eq!(text.expose_secret(), "pem ✓");
    let e = secret_text(
        "GetSecretValue",
        "app/BLOB",
        &json!({"SecretBinary": base64_of(&[0xc3, 0x28])}),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);
    assert!(e.to_string().contains("\"app/BLOB\""), "{e}");
    let e = secret_text("GetSecretValue", "app/X", &json!({"SecretBinary": "%%%"})).unwrap_err();
    assert!(e.to_string().contains("not base64"), "{e}");
    let e = secret_text("GetSecretValue", "app/X", &json!({"Name": "app/X"})).unwrap_err();
    assert!(
        e.to_string()
            .contains("neither SecretString nor SecretBinary"),
        "{e}"
    );
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: bytes::Bytes::from(body.to_string()),
    }
}

#[test]
fn aws_errors_in_json_or_xml_map_to_codes() {
    let cases = [
        (
            answer(400, r#"{"__type":"com.amazonaws.secretsmanager#AccessDeniedException","message":"no"}"#),
            ErrorCode::PermissionDenied,
            "AccessDeniedException: no",
        ),
        (
            answer(400, r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#),
            ErrorCode::PermissionDenied,
            "UnrecognizedClientException",
        ),
        (
            answer(403, "<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>mismatch</Message></Error></Errors></ErrorResponse>"),
            ErrorCode::PermissionDenied,
            "SignatureDoesNotMatch: mismatch",
        ),
        (
            answer(400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#),
            ErrorCode::Unavailable,
            "ThrottlingException",
        ),
        (answer(503, ""), ErrorCode::Unavailable, "HTTP 503"),
        (
            answer(400, r#"{"__type":"InvalidParameterException","Message":"bad filter"}"#),
            ErrorCode::FailedPrecondition,
            "InvalidParameterException: bad filter",
        ),
    ];
    for (answer, code, text) in cases {
        let e = AwsError::parse(&answer).into_error("ListSecrets");
        assert_eq!(e.code(), code, "{e}");
        assert!(e.to_string().contains(text), "{e}");
    }
    let refused = AwsError::parse(&answer(400, r#"{"__type":"AccessDeniedException"}"#));
    assert!(refused.means_no_batch_call());
    let bad_key = AwsError::parse(&answer(400, r#"{"__type":"InvalidSignatureException"}"#));
    assert!(!bad_key.means_no_batch_call());
}
