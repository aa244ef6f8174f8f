{{/*
Expand the name of the chart.
*/}}
{{- define "orderstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, truncated to leave room for the component
suffixes ("-autoscaler" is the longest, 11 characters) within the 63-character limit
of DNS labels. If the release name contains the chart name it is used as is.
*/}}
{{- define "orderstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version as used by the helm.sh/chart label.
*/}}
{{- define "orderstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of every resource. Call with (dict "ctx" $ "component" "producer");
an empty component leaves the app.kubernetes.io/component label out.
*/}}
{{- define "orderstream.labels" -}}
helm.sh/chart: {{ include "orderstream.chart" .ctx }}
{{ include "orderstream.selectorLabels" . }}
{{- if .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: orderstream
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: immutable in Deployments, so they hold only name, instance and component.
Call with (dict "ctx" $ "component" "producer").
*/}}
{{- define "orderstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orderstream.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/*
Name of one component's resources: "<fullname>-<component>".
*/}}
{{- define "orderstream.componentName" -}}
{{- printf "%s-%s" (include "orderstream.fullname" .ctx) .component }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "orderstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Name of the autoscaler's ServiceAccount.
*/}}
{{- define "orderstream.autoscaler.serviceAccountName" -}}
{{- if .Values.autoscaler.serviceAccount.create }}
{{- default (include "orderstream.componentName" (dict "ctx" . "component" "autoscaler")) .Values.autoscaler.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.autoscaler.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
True (non-empty) when the chart runs its own development Redis, i.e. no external Redis is configured.
*/}}
{{- define "orderstream.redis.builtin" -}}
{{- if not (or .Values.redis.external.url .Values.redis.external.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Secret and key holding REDIS_URL. An existing Secret wins; otherwise the chart renders its own
Secret (the external URL, or the address of the built-in Redis).
*/}}
{{- define "orderstream.redis.secretName" -}}
{{- if .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- include "orderstream.componentName" (dict "ctx" . "component" "redis-url") }}
{{- end }}
{{- end }}

{{- define "orderstream.redis.secretKey" -}}
{{- if .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecretKey }}
{{- else -}}
url
{{- end }}
{{- end }}

{{/*
The URL of the built-in Redis (its headless Service resolves to the single pod).
*/}}
{{- define "orderstream.redis.builtinUrl" -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "orderstream.componentName" (dict "ctx" . "component" "redis")) .Release.Namespace }}
{{- end }}

{{/*
Pod-level securityContext of the restricted Pod Security Standard, for the orderstream image
(UID/GID 10001, see the Dockerfile).
*/}}
{{- define "orderstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level securityContext of the restricted Pod Security Standard.
*/}}
{{- define "orderstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Environment shared by every orderstream container: the ConfigMap of shared settings and
REDIS_URL from its Secret.
*/}}
{{- define "orderstream.sharedEnv" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "orderstream.redis.secretName" . }}
      key: {{ include "orderstream.redis.secretKey" . }}
{{- if .Values.redis.tls.enabled }}
- name: REDIS_TLS_CA_FILE
  value: /etc/orderstream/redis-tls/ca.crt
- name: REDIS_TLS_CERT_FILE
  value: /etc/orderstream/redis-tls/tls.crt
- name: REDIS_TLS_KEY_FILE
  value: /etc/orderstream/redis-tls/tls.key
{{- end }}
{{- if .Values.redis.cluster.enabled }}
- name: REDIS_CLUSTER
  value: "true"
{{- end }}
{{- if .Values.redis.sentinel.hosts }}
- name: REDIS_SENTINELS
  value: {{ join "," .Values.redis.sentinel.hosts | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterName | quote }}
{{- end }}
{{- end }}

{{- define "orderstream.sharedEnvFrom" -}}
- configMapRef:
    name: {{ include "orderstream.componentName" (dict "ctx" . "component" "config") }}
{{- end }}

{{/*
The writable /tmp every orderstream container gets (the root filesystem is read-only).
*/}}
{{- define "orderstream.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "orderstream.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
With redis.tls.enabled: the Secret redis.tls.existingSecret (ca.crt, tls.crt, tls.key), mounted
read-only where REDIS_TLS_* (orderstream.sharedEnv) point. Group-readable only: the pods run
with fsGroup 10001. Templates include these only when redis.tls.enabled.
*/}}
{{- define "orderstream.redisTlsVolume" -}}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}

{{- define "orderstream.redisTlsVolumeMount" -}}
- name: redis-tls
  mountPath: /etc/orderstream/redis-tls
  readOnly: true
{{- end }}

{{/*
Fail rendering on value combinations the schema cannot express.
*/}}
{{- define "orderstream.validate" -}}
{{- if le (int .Values.consumer.terminationGracePeriodSeconds) (int .Values.consumer.drainTimeoutSeconds) }}
{{- fail (printf "consumer.terminationGracePeriodSeconds (%d) must be greater than consumer.drainTimeoutSeconds (%d): the pod must outlive its drain deadline" (int .Values.consumer.terminationGracePeriodSeconds) (int .Values.consumer.drainTimeoutSeconds)) }}
{{- end }}
{{- if and .Values.redis.external.url .Values.redis.external.existingSecret }}
{{- fail "set only one of redis.external.url and redis.external.existingSecret" }}
{{- end }}
{{- if and .Values.redis.tls.enabled (not .Values.redis.tls.existingSecret) }}
{{- fail "redis.tls.enabled needs redis.tls.existingSecret (a Secret with ca.crt, tls.crt and tls.key)" }}
{{- end }}
{{- if and .Values.redis.tls.enabled (include "orderstream.redis.builtin" .) }}
{{- fail "redis.tls.enabled needs an external Redis (redis.external.url or existingSecret, a rediss:// URL): the built-in Redis has no TLS" }}
{{- end }}
{{- if and .Values.redis.tls.enabled .Values.redis.external.url (not (hasPrefix "rediss://" .Values.redis.external.url)) }}
{{- fail "redis.tls.enabled needs a rediss:// redis.external.url" }}
{{- end }}
{{- if ne (empty .Values.redis.sentinel.hosts) (empty .Values.redis.sentinel.masterName) }}
{{- fail "set redis.sentinel.hosts and redis.sentinel.masterName together" }}
{{- end }}
{{- if and .Values.redis.sentinel.hosts (include "orderstream.redis.builtin" .) }}
{{- fail "redis.sentinel needs an external Redis URL (redis.external.url or existingSecret) for its scheme, user, password and db" }}
{{- end }}
{{- if and .Values.redis.cluster.enabled (include "orderstream.redis.builtin" .) }}
{{- fail "redis.cluster.enabled needs an external Redis Cluster (redis.external.url or existingSecret naming any of its nodes): the built-in Redis is a single standalone server" }}
{{- end }}
{{- if and .Values.redis.cluster.enabled .Values.redis.sentinel.hosts }}
{{- fail "redis.cluster.enabled and redis.sentinel exclude each other: a Redis Cluster fails over by itself, Sentinel watches a standalone primary" }}
{{- end }}
{{- if and .Values.autoscaler.streamAutoscaler.enabled (gt (int .Values.autoscaler.streamAutoscaler.minReplicas) (int .Values.autoscaler.streamAutoscaler.maxReplicas)) }}
{{- fail "autoscaler.streamAutoscaler.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- end }}

{{/*
The Secret holding ADMIN_TOKEN: producer.adminToken.existingSecret, else the one the chart
generates (templates/producer/admin-secret.yaml).
*/}}
{{- define "orderstream.adminSecretName" -}}
{{- default (printf "%s-admin" (include "orderstream.fullname" .)) .Values.producer.adminToken.existingSecret -}}
{{- end }}
