# syntax=docker/dockerfile:1
# A static edgeshim binary on a distroless image, run as a non-root user.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t edgeshim .
#   docker run -p 8443:8443/tcp -p 8443:8443/udp \
#     -v $PWD/edgeshim.yaml:/etc/edgeshim/edgeshim.yaml:ro -v edgeshim-data:/var/lib/edgeshim edgeshim
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/edgeshim ./cmd/edgeshim \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="edgeshim" \
      org.opencontainers.image.description="Edge proxy and protocol-translation sidecar for IoT fleets: TLS termination, limits, reverse proxy, HTTPS polling to MQTT 5 sessions" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/edgeshim/edgeshim" \
      org.opencontainers.image.documentation="https://github.com/edgeshim/edgeshim#readme"
COPY --from=build /out/edgeshim /usr/local/bin/edgeshim
# data_dir (self-signed cert, ACME storage) is /var/lib/edgeshim, absolute,
# owned by the non-root user; mount a volume there to keep it.
COPY --from=build --chown=65532:65532 /out/data /var/lib/edgeshim
# The configuration run when none is mounted over it (see the file).
COPY examples/image/edgeshim.yaml /etc/edgeshim/edgeshim.yaml
WORKDIR /var/lib/edgeshim
USER 65532:65532
# HTTPS on TCP and HTTP/3 on UDP. The admin port (9090: /metrics, /healthz,
# /readyz) is not exposed: edgeshim binds it to 127.0.0.1 unless
# listen.admin says otherwise, so publishing it would reach nothing. To
# scrape it from outside the container, set listen.admin: ":9090" in the
# configuration and publish the port yourself (-p 127.0.0.1:9090:9090).
EXPOSE 8443/tcp 8443/udp
# No shell or curl in a distroless image: the binary probes its own
# readiness endpoint (http://127.0.0.1:9090/readyz; pass -url for another
# admin address). /readyz answers 503 while edgeshim drains on SIGTERM.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/edgeshim", "health"]
ENTRYPOINT ["/usr/local/bin/edgeshim"]
CMD ["run", "-c", "/etc/edgeshim/edgeshim.yaml"]
