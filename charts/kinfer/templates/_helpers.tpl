{{/*
Helpers for the templates that hack/chart writes from config/default. With
the defaults in values.yaml each must render what config/default has: make
chart compares the two and fails on any difference.
*/}}

{{/* Helm's labels, beside config/default's own on every object. */}}
{{- define "kinfer.labels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Uninstalling keeps the CRDs, and so every model and request. */}}
{{- define "kinfer.crdAnnotations" -}}
{{- if .Values.crds.keep }}
helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{- define "kinfer.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{- define "kinfer.imagePullPolicy" -}}
{{- with .Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end }}

{{/* Where the shim's certificate and key are mounted. */}}
{{- define "kinfer.shimTLSDir" -}}
/etc/kinfer/shim-tls
{{- end }}

{{- define "kinfer.shimTLS" -}}
{{- and .Values.shim.enabled .Values.shim.tls.secretName -}}
{{- end }}

{{/* The manager's arguments, in config/default's order. */}}
{{- define "kinfer.args" -}}
{{- if .Values.leaderElection.enabled }}
- --leader-elect
{{- end }}
- --health-probe-bind-address=:8081
{{- if .Values.metrics.enabled }}
- --metrics-bind-address=:{{ .Values.metrics.port }}
{{- else }}
- --metrics-bind-address=0
{{- end }}
{{- if .Values.shim.enabled }}
- --shim-bind-address=:{{ .Values.shim.port }}
- --shim-auth={{ .Values.shim.auth }}
{{- with .Values.shim.namespace }}
- --shim-namespace={{ . }}
{{- end }}
{{- if include "kinfer.shimTLS" . }}
- --shim-tls-cert-file={{ include "kinfer.shimTLSDir" . }}/tls.crt
- --shim-tls-key-file={{ include "kinfer.shimTLSDir" . }}/tls.key
{{- end }}
{{- else }}
- --shim-bind-address=
{{- end }}
{{- if .Values.work.enabled }}
- --work-bind-address=:{{ .Values.work.port }}
- --work-url=http://kinfer-work.{{ .Release.Namespace }}.svc:{{ .Values.work.port }}
{{- end }}
{{- with .Values.callback.allowCIDRs }}
- --callback-allow-cidrs={{ join "," . }}
{{- end }}
{{- if .Values.callback.requireHTTPS }}
- --callback-require-https
{{- end }}
{{- with .Values.callback.maxConcurrentDeliveries }}
- --max-concurrent-deliveries={{ . }}
{{- end }}
{{- with .Values.callback.maxDeliveriesPerHost }}
- --max-deliveries-per-host={{ . }}
{{- end }}
{{- end }}

{{- define "kinfer.containerPorts" -}}
{{- if .Values.shim.enabled }}
- name: shim
  containerPort: {{ .Values.shim.port }}
  protocol: TCP
{{- end }}
{{- if .Values.work.enabled }}
- name: work
  containerPort: {{ .Values.work.port }}
  protocol: TCP
{{- end }}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
- name: probes
  containerPort: 8081
  protocol: TCP
{{- end }}

{{- define "kinfer.volumeMounts" -}}
{{- if include "kinfer.shimTLS" . }}
volumeMounts:
- name: shim-tls
  mountPath: {{ include "kinfer.shimTLSDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "kinfer.volumes" -}}
{{- if include "kinfer.shimTLS" . }}
volumes:
- name: shim-tls
  secret:
    secretName: {{ .Values.shim.tls.secretName }}
{{- end }}
{{- end }}

{{- define "kinfer.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
