//! An OTLP/gRPC collector for the telemetry tests: records the spans and metrics the real
//! daemons export to it.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace: Vec<u8>,
    pub id: Vec<u8>,
    pub parent: Vec<u8>,
    /// Every attribute, as text (for searching).
    pub attributes: String,
}

/// One metric as a collector received it, with the resource that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedMetric {
    /// `service.name`.
    pub service: String,
    /// `service.instance.id`.
    pub instance: String,
    pub metric: opentelemetry_proto::tonic::metrics::v1::Metric,
}

/// An OTLP/gRPC collector standing in for a real one: keeps every span and every metric it
/// receives.
#[derive(Default, Clone)]
pub struct OtlpReceiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metrics: Arc<Mutex<Vec<ReceivedMetric>>>,
}

fn resource_text(
    r: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
    key: &str,
) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    r.iter()
        .flat_map(|r| &r.attributes)
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = resource_text(rs.resource.as_ref(), "service.name");
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        attributes: format!("{:?}", s.attributes),
                        service: service.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut out = self.metrics.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            let service = resource_text(rm.resource.as_ref(), "service.name");
            let instance = resource_text(rm.resource.as_ref(), "service.instance.id");
            for sm in rm.scope_metrics {
                for metric in sm.metrics {
                    out.push(ReceivedMetric {
                        service: service.clone(),
                        instance: instance.clone(),
                        metric,
                    });
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

type Started = (
    std::net::SocketAddr,
    OtlpReceiver,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
);

impl OtlpReceiver {
    /// Listening on a port-0 address; (its address, the receiver, the server task).
    pub async fn start() -> Started {
        Self::serve(None).await
    }

    /// Like [`OtlpReceiver::start`], over TLS with `tls`'s certificate (no client certificate
    /// asked for).
    pub async fn start_tls(tls: Arc<edgewise_tls::Tls>) -> Started {
        Self::serve(Some(tls)).await
    }

    async fn serve(tls: Option<Arc<edgewise_tls::Tls>>) -> Started {
        let receiver = OtlpReceiver::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()));
        let server = match tls {
            Some(tls) => {
                tokio::spawn(router.serve_with_incoming(edgewise_tls::net::incoming(listener, tls)))
            }
            None => tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener))),
        };
        (addr, receiver, server)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Every metric received so far, oldest export first.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.metrics.lock().unwrap().clone()
    }
}
