#!/usr/bin/env bash
# The local cluster's certificates and kubeconfigs, generated with openssl into .run/cluster/pki
# (idempotent: an existing file is kept, so `make cluster-up` twice does not rotate anything).
# One CA signs every serving and client certificate; a second one is the front proxy's (aggregated
# APIs such as metrics-server trust it for the request headers the apiserver forwards).
set -euo pipefail
# shellcheck source=cluster/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PKI="$CLUSTER_DIR/pki"
mkdir -p "$PKI"
umask 077

ca() {  # ca NAME CN
  [[ -f "$PKI/$1.crt" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 3650 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

cert() {  # cert CA NAME SUBJECT USAGE [SAN,...] : USAGE = server | client | both
  local ca="$1" name="$2" subj="$3" usage="$4" san="${5:-}" ext
  [[ -f "$PKI/$name.crt" ]] && return 0
  case "$usage" in
    server) ext="extendedKeyUsage=serverAuth" ;;
    client) ext="extendedKeyUsage=clientAuth" ;;
    both) ext="extendedKeyUsage=serverAuth,clientAuth" ;;
  esac
  openssl req -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "$ext"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -out "$PKI/$name.crt" -days 3650 -extfile "$PKI/$name.ext" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() {  # kubeconfig FILE CERT_NAME
  local file="$1" name="$2"
  [[ -f "$file" ]] && return 0
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: image-moderation-local
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: image-moderation-local
  context: {cluster: image-moderation-local, user: $name}
current-context: image-moderation-local
EOF
}

ca ca "image-moderation-local-ca"
ca front-proxy-ca "image-moderation-local-front-proxy-ca"
svc="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
cert ca kube-apiserver "/CN=kube-apiserver" server "$svc,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$APISERVER_SERVICE_IP"
cert ca apiserver-kubelet-client "/O=kubelet-api-clients/CN=kube-apiserver-kubelet-client" client
cert ca etcd-server "/CN=etcd" server "DNS:localhost,IP:127.0.0.1"
cert ca apiserver-etcd-client "/CN=kube-apiserver-etcd-client" client
cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" client
cert ca admin "/O=system:masters/CN=image-moderation-admin" client
cert ca kube-controller-manager "/CN=system:kube-controller-manager" client
cert ca kube-scheduler "/CN=system:kube-scheduler" client
cert ca kube-proxy "/CN=system:kube-proxy" client
cert ca kube-router "/CN=system:kube-router" client
cert ca kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
cert ca kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" server "DNS:$NODE_NAME,IP:$NODE_IP"
# KServe's webhooks, reached by the apiserver through their Service (the name KServe's manifests use).
cert ca kserve-webhook "/CN=kserve-webhook-server-service.kserve.svc" server \
  "DNS:kserve-webhook-server-service.kserve.svc,DNS:kserve-webhook-server-service.kserve.svc.$CLUSTER_DOMAIN"
# metrics-server's serving certificate (the APIService trusts the cluster CA through its caBundle).
cert ca metrics-server "/CN=metrics-server.kube-system.svc" server \
  "DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.$CLUSTER_DOMAIN"
[[ -f "$PKI/service-account.key" ]] || openssl genrsa -out "$PKI/service-account.key" 2048 2>/dev/null
[[ -f "$PKI/service-account.pub" ]] || openssl rsa -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub" 2>/dev/null

kubeconfig "$CLUSTER_DIR/kubeconfig" admin
for c in kube-controller-manager kube-scheduler kube-proxy kube-router kubelet; do kubeconfig "$PKI/$c.kubeconfig" "$c"; done
chmod 600 "$CLUSTER_DIR/kubeconfig"
