# meterproxy: a metering sidecar reverse proxy.
#   docker build -t meterproxy .
#   docker run -p 8080:8080 -p 9090:9090 -v $PWD/meterproxy.yaml:/etc/meterproxy/meterproxy.yaml \
#       -e METERPROXY_ADMIN_TOKEN=... meterproxy
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY rules ./rules
COPY billing ./billing
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/meterproxy --create-home meterproxy
COPY --from=build /install /usr/local
COPY examples/demo.yaml /etc/meterproxy/meterproxy.yaml
# The bundled config reads these; mount your own file over it for production.
ENV METERPROXY_DB=/var/lib/meterproxy/meterproxy.db \
    METERPROXY_LISTEN=0.0.0.0:8080 \
    METERPROXY_UPSTREAM=http://upstream:9000 \
    PYTHONUNBUFFERED=1
USER meterproxy
WORKDIR /var/lib/meterproxy
VOLUME ["/var/lib/meterproxy"]
EXPOSE 8080
# /healthz is served on the admin listener, bound to loopback inside the container unless
# METERPROXY_ADMIN_LISTEN says otherwise (then a token of 32+ characters is required).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["meterproxy"]
CMD ["run", "-c", "/etc/meterproxy/meterproxy.yaml"]
