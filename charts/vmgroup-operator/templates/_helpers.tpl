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

{{/* The controller's objects share one name: Deployment, ServiceAccount, ClusterRole, Role. */}}
{{- define "vmgroup-operator.controllerName" -}}
{{- printf "%s-controller" (include "vmgroup-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Lease the controller replicas elect their leader with (one per release). */}}
{{- define "vmgroup-operator.leaseName" -}}
{{- .Values.controller.leaseName | default (include "vmgroup-operator.controllerName" .) }}
{{- end }}

{{/* The Secret holding the vCenter credentials: the user's own, or the chart's. */}}
{{- define "vmgroup-operator.vcenterSecret" -}}
{{- .Values.controller.vcenter.credentials.existingSecret | default (printf "%s-vcenter" (include "vmgroup-operator.controllerName" .)) }}
{{- end }}

{{/* Labels of one component's objects: (dict "root" $ "component" "webhook"). */}}
{{- define "vmgroup-operator.componentLabels" -}}
{{ include "vmgroup-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vmgroup-operator.componentSelector" -}}
{{ include "vmgroup-operator.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Where one component's Pods may run (its values: topologySpread, nodeSelector, tolerations,
affinity), at the indentation of a Pod spec's keys: (dict "root" $ "component" "webhook"). */}}
{{- define "vmgroup-operator.scheduling" -}}
{{- $values := index .root.Values .component }}
{{- if $values.topologySpread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "vmgroup-operator.componentSelector" . | nindent 8 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget for one component, only with 2 or more replicas (with a single one
it would block every node drain): (dict "root" $ "component" "webhook"). */}}
{{- define "vmgroup-operator.pdb" -}}
{{- $values := index .root.Values .component }}
{{- if and $values.podDisruptionBudget.enabled (gt (int $values.replicas) 1) }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include (printf "vmgroup-operator.%sName" .component) .root }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "vmgroup-operator.componentLabels" . | nindent 4 }}
spec:
  minAvailable: {{ $values.podDisruptionBudget.minAvailable }}
  selector:
    matchLabels:
      {{- include "vmgroup-operator.componentSelector" . | nindent 6 }}
{{- end }}
{{- end }}
