{{/* Chart name. */}}
{{- define "grasp-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name (at most 48 characters: suffixes like -controller-metrics are added). */}}
{{- define "grasp-sync.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "grasp-sync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "grasp-sync.labels" -}}
helm.sh/chart: {{ include "grasp-sync.chart" . }}
{{ include "grasp-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: grasp-sync
{{- end }}

{{- define "grasp-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grasp-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Component labels: include "grasp-sync.componentLabels" (list $ "controller") */}}
{{- define "grasp-sync.componentLabels" -}}
{{ include "grasp-sync.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "grasp-sync.componentSelectorLabels" -}}
{{ include "grasp-sync.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "grasp-sync.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "grasp-sync.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "grasp-sync.workerServiceAccountName" -}}
{{- if .Values.worker.serviceAccount.create }}
{{- default (printf "%s-worker" (include "grasp-sync.fullname" .)) .Values.worker.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.worker.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "grasp-sync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The embedded relay's in-cluster URL. */}}
{{- define "grasp-sync.embeddedRelayUrl" -}}
{{- printf "ws://%s-relay.%s.svc:%d" (include "grasp-sync.fullname" .) .Release.Namespace (int .Values.embeddedRelay.service.port) }}
{{- end }}

{{/* Our relay's URL: ownRelay.url, or the embedded relay when enabled. */}}
{{- define "grasp-sync.ownRelayUrl" -}}
{{- if .Values.ownRelay.url }}
{{- .Values.ownRelay.url }}
{{- else if .Values.embeddedRelay.enabled }}
{{- include "grasp-sync.embeddedRelayUrl" . }}
{{- else }}
{{- fail "ownRelay.url is required: set --set ownRelay.url=wss://your-grasp-relay (or embeddedRelay.enabled=true)" }}
{{- end }}
{{- end }}

{{- define "grasp-sync.configChecksum" -}}
{{- include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/*
Annotations of the SyncRelay and RelayAllowlist objects. Helm cannot create a custom resource
in the same install that creates its CRD (the kind is unknown when the release is built), so
while the API is not yet served they are created by a post-install hook; the ownership
metadata lets the next upgrade adopt them as ordinary release objects.
*/}}
{{- define "grasp-sync.customResourceAnnotations" -}}
{{- if not (.Capabilities.APIVersions.Has "sync.grasp.dev/v1alpha1") }}
helm.sh/hook: post-install
helm.sh/hook-weight: "0"
meta.helm.sh/release-name: {{ .Release.Name }}
meta.helm.sh/release-namespace: {{ .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the workloads: list $ .Values.controller */}}
{{- define "grasp-sync.podScheduling" -}}
{{- $v := index . 1 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* The env every grasp-sync container gets: pod identity through the downward API. */}}
{{- define "grasp-sync.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: GRASP_SYNC_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{/* Probes on the --listen port; /livez and /readyz never depend on remote relays. */}}
{{- define "grasp-sync.probes" -}}
startupProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}
