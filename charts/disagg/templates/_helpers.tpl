{{/*
Names, labels and the operator's RBAC rules, defined once and used by every template.
*/}}

{{- define "disagg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: the release name alone when it already contains the chart's. */}}
{{- define "disagg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "disagg.operatorName" -}}
{{- printf "%s-operator" (include "disagg.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "disagg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "disagg.labels" -}}
helm.sh/chart: {{ include "disagg.chart" . }}
app.kubernetes.io/name: {{ include "disagg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: disagg
{{- end }}

{{/* The operator Deployment's immutable selector. */}}
{{- define "disagg.operatorSelector" -}}
app.kubernetes.io/name: {{ include "disagg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "disagg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "disagg.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "disagg.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces the operator watches in namespaced mode; fails early on an empty list. */}}
{{- define "disagg.watchNamespaces" -}}
{{- if and .Values.rbac.namespaced (not .Values.watchNamespaces) }}
{{- fail "rbac.namespaced=true needs watchNamespaces: the namespaces the operator may act in" }}
{{- end }}
{{- if and .Values.watchNamespaces (not .Values.rbac.namespaced) }}
{{- fail "watchNamespaces is set but rbac.namespaced=false: set rbac.namespaced=true so the operator gets Roles in exactly those namespaces" }}
{{- end }}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- end }}

{{/*
What the operator does inside a namespace, resource by resource (see docs/security.md for why
each line is there).  No wildcards: a new kind the operator manages must be added here, and
tests/test_chart.py checks every rule against this list of verbs.
*/}}
{{- define "disagg.namespacedRules" -}}
# The custom resources: watched; kopf removes the finalizer versions <= 0.1 added (patch);
# the operator creates, applies and prunes a DisaggDeployment's child InferencePools.
- apiGroups: ["disagg.dev"]
  resources: ["disaggdeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["disagg.dev"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["disagg.dev"]
  resources: ["disaggdeployments/status", "inferencepools/status"]
  verbs: ["get", "patch", "update"]
# Children rendered per pool and per gateway (server-side apply creates and patches; pruning
# deletes what is no longer desired).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Each gateway gets a RoleBinding to the chart's gateway ClusterRole (a Role of its own
# when the operator runs without --gateway-cluster-role).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# RBAC lets a subject grant only what it holds: the gateways' Role grants this.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Worker pods: readiness for status, and events that trigger a reconcile (and, only with
# operator.podDeletionCost, their pod-deletion-cost annotation).
- apiGroups: [""]
  resources: ["pods"]
  {{- if .Values.operator.podDeletionCost }}
  verbs: ["get", "list", "watch", "patch"]
  {{- else }}
  verbs: ["get", "list", "watch"]
  {{- end }}
# Events on the custom resources (the operator posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Cluster-scoped reads kopf makes: CRDs (to notice a CRD installed after the operator started)
and, in namespaced mode only, namespaces (to notice a listed namespace created later).
*/}}
{{- define "disagg.clusterReadRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if .Values.rbac.namespaced }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* Pod Security "restricted" for every pod this chart runs. */}}
{{- define "disagg.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "disagg.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The ClusterRole every gateway is bound to in its namespace. */}}
{{- define "disagg.gatewayClusterRole" -}}
{{- printf "%s-gateway" (include "disagg.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
