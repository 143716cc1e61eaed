{{/* The chart's name, or nameOverride. */}}
{{- define "infernetes.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: the release name, plus the chart name unless the
release name already holds it ("infernetes" -> "infernetes", "prod" -> "prod-infernetes"). */}}
{{- define "infernetes.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "infernetes.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object of the chart but its component. */}}
{{- define "infernetes.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "infernetes.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of the operator's objects. */}}
{{- define "infernetes.labels" -}}
{{ include "infernetes.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of the monitoring objects (dashboards, rules, monitors). */}}
{{- define "infernetes.monitoringLabels" -}}
{{ include "infernetes.commonLabels" . }}
app.kubernetes.io/component: monitoring
{{- end -}}

{{/* Labels that select the operator's pod; its Deployment's selector, so never changed. */}}
{{- define "infernetes.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infernetes.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "infernetes.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "infernetes.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: give the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces, one per line: watchNamespaces, or the release namespace. Empty
when clusterWide. */}}
{{- define "infernetes.watchNamespaces" -}}
{{- if .Values.clusterWide -}}
{{- if .Values.watchNamespaces -}}
{{- fail "watchNamespaces: must be empty when clusterWide is true (every namespace is watched)" -}}
{{- end -}}
{{- else -}}
{{- join "\n" (default (list .Release.Namespace) .Values.watchNamespaces) -}}
{{- end -}}
{{- end -}}

{{- define "infernetes.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "infernetes.runtimeImage" -}}
{{- $image := .Values.runtime.image -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* What the operator does through the API (operator/kube.py, reconcile.py, handlers.py),
verb by verb; see README.md for why each is needed. */}}
{{- define "infernetes.rbacRules" -}}
- apiGroups: ["infernetes.io"]
  resources: ["inferenceservices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["infernetes.io"]
  resources: ["inferenceservices/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
