{{/* The release notes, as a named template so a test can render them (helm template skips NOTES.txt). */}}
{{- define "im.notes" -}}
{{- $ns := .Release.Namespace }}
{{- $p := .Values.predictor }}
{{- $runtime := printf "runtime torchserve: TorchServe 0.12 image %s:%s" $p.image.repository (default .Chart.AppVersion $p.image.tag) }}
{{- if include "im.kserveRuntime" . }}
{{- $runtime = printf "runtime kserve: python -m kserve_runtime, image %s:%s; ONNX backends only, no :explain" $p.kserveImage.repository (default .Chart.AppVersion $p.kserveImage.tag) }}
{{- end }}
image-moderation {{ .Chart.AppVersion }} is installed in namespace {{ $ns }}.

Predictors (KServe {{ .Values.predictor.deploymentMode }} mode, {{ $runtime }}), archives from {{ .Values.predictor.storageUri }}:
{{- range $model, $m := .Values.models }}
{{- if $m.enabled }}
  {{ $model }}: kubectl -n {{ $ns }} get inferenceservice {{ include "im.isvcName" (dict "ctx" $ "model" $model) }}
{{- end }}
{{- end }}
{{- range $model, $m := .Values.models }}
{{- if and $m.enabled $m.weightsWarning }}

WARNING: {{ $model }} was {{ $m.weightsWarning }}
{{- end }}
{{- end }}

The archives must be in the storage first (config/config.properties + model-store/*.mar):
  make models && make upload-models STORAGE_URI={{ .Values.predictor.storageUri }}

Try a prediction (Open Inference Protocol v2) from inside the cluster:
  kubectl -n {{ $ns }} port-forward svc/{{ include "im.isvcName" (dict "ctx" . "model" .Values.bridge.model) }}-predictor 8080:80
  curl -s -H 'Content-Type: image/jpeg' --data-binary @photo.jpg http://127.0.0.1:8080/v1/models/{{ .Values.bridge.model }}:predict
{{- if .Values.networkPolicy.enabled }}
  (NetworkPolicies admit inference traffic only from the bridge and the ingress/mesh namespaces; port-forward goes
  through the kubelet and is allowed.)
{{- end }}
{{- if .Values.bridge.enabled }}

Kafka bridge: {{ .Values.bridge.kafka.inputTopic }} -> {{ .Values.bridge.model }} -> {{ .Values.bridge.kafka.outputTopic }} ({{ with .Values.bridge.kafka.reviewTopic }}review decisions also: {{ . }}; {{ end }}failures: {{ .Values.bridge.kafka.dlqTopic }})
  kubectl -n {{ $ns }} rollout status deployment/{{ include "im.bridgeName" . }}
  kubectl -n {{ $ns }} logs -f deployment/{{ include "im.bridgeName" . }}
  Scaling: {{ if .Values.bridge.keda.enabled }}KEDA on consumer lag{{ else if .Values.bridge.autoscaling.enabled }}HPA on CPU{{ else }}fixed {{ .Values.bridge.replicas }} replica(s){{ end }}, at most {{ .Values.bridge.kafka.inputPartitions }} (input partitions).
{{- end }}
{{- if .Values.monitoring.dashboard.enabled }}

Grafana: dashboard "Image moderation" (folder "{{ .Values.monitoring.dashboard.folder }}"); alerts: PrometheusRule {{ include "im.fullname" . }}.
{{- end }}
{{- end -}}
