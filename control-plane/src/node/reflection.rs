//! gRPC reflection on each port, in both versions stock tools ask (`grpc.reflection.v1` and
//! the older `v1alpha`, still used by older grpcurl and several GUI clients).
//!
//! Architecture invariant: a port's reflection lists exactly the services that port serves —
//! the names are collected by [`Served::named`] from the very values given to the router, so
//! the list cannot drift from what is served.

use tonic::server::NamedService;
use tonic_reflection::server::v1::{ServerReflection as V1, ServerReflectionServer as V1Server};
use tonic_reflection::server::v1alpha::{
    ServerReflection as V1Alpha, ServerReflectionServer as V1AlphaServer,
};

/// Names of the services a port serves, collected while its router is built.
#[derive(Debug, Default)]
pub(super) struct Served {
    names: Vec<&'static str>,
}

impl Served {
    /// Records `service`'s name and hands it on to the router.
    pub(super) fn named<S: NamedService>(&mut self, service: S) -> S {
        self.names.push(S::NAME);
        service
    }

    /// Both reflection services for the port: listing the recorded services and the two
    /// reflection services themselves; every berth, health and reflection file can be read
    /// (a symbol names its file, whatever the port).
    pub(super) fn reflection(
        &self,
    ) -> Result<(V1Server<impl V1>, V1AlphaServer<impl V1Alpha>), tonic_reflection::server::Error>
    {
        let builder = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(berth_proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .with_service_name(<V1Server<()> as NamedService>::NAME)
                .with_service_name(<V1AlphaServer<()> as NamedService>::NAME);
            for name in &self.names {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        Ok((builder().build_v1()?, builder().build_v1alpha()?))
    }
}
