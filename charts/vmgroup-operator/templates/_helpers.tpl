{{/* Names, labels and the image: one definition each. */}}

{{- define "vmgroup-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vmgroup-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "vmgroup-operator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "vmgroup-operator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "vmgroup-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vmgroup-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vmgroup-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmgroup-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vmgroup-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The webhook's objects share one name: Deployment, Service, ServiceAccount, Secret. */}}
{{- define "vmgroup-operator.webhookName" -}}
{{- printf "%s-webhook" (include "vmgroup-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vmgroup-operator.webhookTLSSecret" -}}
{{- printf "%s-tls" (include "vmgroup-operator.webhookName" .) }}
{{- end }}

{{/* Namespaces whose objects never go to the webhook: the release's own and the system ones. */}}
{{- define "vmgroup-operator.excludedNamespaces" -}}
{{- $names := list .Release.Namespace "kube-system" "kube-public" "kube-node-lease" }}
{{- concat $names .Values.webhook.excludedNamespaces | uniq | toJson }}
{{- end }}
