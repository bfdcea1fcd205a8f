{{/* Name of the chart (overridable). */}}
{{- define "im.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: release name, plus the chart name unless the release already holds it. */}}
{{- define "im.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "im.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "bridge"). */}}
{{- define "im.labels" -}}
helm.sh/chart: {{ include "im.chart" .ctx }}
{{ include "im.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: image-moderation
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "im.selectorLabels" -}}
app.kubernetes.io/name: {{ include "im.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* InferenceService name of a model: DNS-1035 (mobilenet_v2 -> <fullname>-mobilenet-v2). */}}
{{- define "im.isvcName" -}}
{{- printf "%s-%s" (include "im.fullname" .ctx) (.model | replace "_" "-") | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{/* Runtime name: <fullname>-torchserve or <fullname>-kserve (values `runtime`), unless predictor.runtime.name. */}}
{{- define "im.runtimeName" -}}
{{- default (printf "%s-%s" (include "im.fullname" .) .Values.runtime) .Values.predictor.runtime.name -}}
{{- end -}}

{{/* "true" when the predictors run `python -m kserve_runtime` (values `runtime: kserve`), else "". */}}
{{- define "im.kserveRuntime" -}}
{{- if eq .Values.runtime "kserve" -}}true{{- end -}}
{{- end -}}

{{/* Port of the predictors' Prometheus metrics: TorchServe's metrics API, or the kserve runtime's REST port. */}}
{{- define "im.predictorMetricsPort" -}}
{{- if include "im.kserveRuntime" . -}}8080{{- else -}}8082{{- end -}}
{{- end -}}

{{/* INFERENCE_READY_PATH: bridge.inferenceReadyPath, or (null) the chart runtime's readiness of the bridge's model. */}}
{{- define "im.inferenceReadyPath" -}}
{{- $path := .Values.bridge.inferenceReadyPath -}}
{{- if not (kindIs "invalid" $path) -}}
{{- $path -}}
{{- else if include "im.kserveRuntime" . -}}
{{- printf "/v2/models/%s/ready" .Values.bridge.model -}}
{{- else -}}
/ping
{{- end -}}
{{- end -}}

{{- define "im.bridgeName" -}}
{{- printf "%s-bridge" (include "im.fullname" .) -}}
{{- end -}}

{{- define "im.bridgeServiceAccount" -}}
{{- if .Values.bridge.serviceAccount.create -}}
{{- default (include "im.bridgeName" .) .Values.bridge.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.bridge.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Enabled model names, sorted, as a list. */}}
{{- define "im.enabledModels" -}}
{{- $out := list -}}
{{- range $name, $m := .Values.models -}}
{{- if $m.enabled -}}{{- $out = append $out $name -}}{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Whole CPUs in a Kubernetes CPU quantity ("2", "1500m", 2.5), at least 1. */}}
{{- define "im.cpuCount" -}}
{{- $q := toString . -}}
{{- $n := 0 -}}
{{- if hasSuffix "m" $q -}}
{{- $n = div (trimSuffix "m" $q | atoi) 1000 -}}
{{- else -}}
{{- $n = $q | float64 | floor | int -}}
{{- end -}}
{{- max 1 $n -}}
{{- end -}}

{{/* Prometheus job names (also used by the alert rules and the local dashboard check). */}}
{{- define "im.predictorJob" -}}{{ include "im.fullname" . }}-predictor{{- end -}}
{{- define "im.bridgeJob" -}}{{ include "im.bridgeName" . }}{{- end -}}

{{/* Bridge inference URL: explicit, or the KServe predictor Service of the bridge's model. */}}
{{- define "im.inferenceUrl" -}}
{{- if .Values.bridge.inferenceUrl -}}
{{- .Values.bridge.inferenceUrl -}}
{{- else -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "im.isvcName" (dict "ctx" . "model" .Values.bridge.model)) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Replica cap: never more consumers than input partitions. */}}
{{- define "im.bridgeMaxReplicas" -}}
{{- min (int .max) (int .ctx.Values.bridge.kafka.inputPartitions) -}}
{{- end -}}

{{/*
FETCH_* settings (handlers/fetch.py) from `references`, as a YAML map: the bridge's ConfigMap and the kserve
predictor's env render the same values.
*/}}
{{- define "im.fetchEnv" -}}
{{- $r := .Values.references -}}
FETCH_URL_HOSTS: {{ join "," $r.urlHosts | quote }}
FETCH_S3_BUCKETS: {{ join "," $r.s3Buckets | quote }}
FETCH_S3_ENDPOINT_URL: {{ $r.s3EndpointUrl | quote }}
FETCH_S3_REGION: {{ $r.s3Region | quote }}
FETCH_PRIVATE_NETWORKS: {{ join "," $r.privateNetworks | quote }}
FETCH_MAX_BYTES: {{ $r.maxBytes | int64 | quote }}
FETCH_CONNECT_TIMEOUT_S: {{ $r.connectTimeoutSeconds | toString | quote }}
FETCH_READ_TIMEOUT_S: {{ $r.readTimeoutSeconds | toString | quote }}
FETCH_TOTAL_TIMEOUT_S: {{ $r.totalTimeoutSeconds | toString | quote }}
FETCH_MAX_REDIRECTS: {{ $r.maxRedirects | int64 | quote }}
FETCH_CONCURRENCY: {{ $r.concurrency | int64 | quote }}
{{- end }}
