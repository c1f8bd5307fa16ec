# syntax=docker/dockerfile:1
# Build a static edgeshim binary, then run it as a non-root user on a
# distroless-style minimal image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/edgeshim ./cmd/edgeshim \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/edgeshim /usr/local/bin/edgeshim
# data_dir (self-signed cert, ACME storage) must be writable by the user.
COPY --from=build --chown=65532:65532 /out/data /var/lib/edgeshim
WORKDIR /var/lib/edgeshim
USER 65532:65532
EXPOSE 8443/tcp 8443/udp 9090/tcp
ENTRYPOINT ["/usr/local/bin/edgeshim"]
CMD ["run", "-c", "/etc/edgeshim/edgeshim.yaml"]
