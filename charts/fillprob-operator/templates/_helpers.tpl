{{/* Names and labels shared by every template. */}}

{{- define "fillprob-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fillprob-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "fillprob-operator.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "fillprob-operator.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fillprob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fillprob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fillprob-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "fillprob-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fillprob-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fillprob-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when kopf peering is on: forced by peering.enabled, else replicas > 1. */}}
{{- define "fillprob-operator.peering" -}}
{{- if kindIs "bool" .Values.peering.enabled -}}
{{- ternary "true" "" .Values.peering.enabled -}}
{{- else if gt (int .Values.replicas) 1 -}}
true
{{- end -}}
{{- end -}}

{{- define "fillprob-operator.peeringName" -}}
{{- default (include "fillprob-operator.fullname" .) .Values.peering.name -}}
{{- end -}}

{{- define "fillprob-operator.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "fillprob-operator.fullname" .)) .Values.webhook.tokenSecret.name -}}
{{- end -}}

{{/* The namespaces to watch, checked against rbac.scope; empty means all (cluster scope). */}}
{{- define "fillprob-operator.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "namespaced" -}}
{{- if not .Values.watchNamespaces -}}
{{- fail "rbac.scope=namespaced needs watchNamespaces: [a, b] (the namespaces the operator may act in)" -}}
{{- end -}}
{{- join "," .Values.watchNamespaces -}}
{{- else if .Values.watchNamespaces -}}
{{- fail "watchNamespaces is set but rbac.scope is cluster: set rbac.scope=namespaced to limit the operator to those namespaces" -}}
{{- end -}}
{{- end -}}

{{/* Rules for the namespaced resources (ClusterRole in cluster scope, Role per namespace otherwise). */}}
{{- define "fillprob-operator.namespacedRules" -}}
- apiGroups: [grinder.io]
  resources: [fillprobrollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [grinder.io]
  resources: [fillprobrollouts/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, patch]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
