// AzureML Data Scientist for the app's identity on one Azure ML online endpoint (it carries
// onlineEndpoints/score/action; the endpoint must use auth_mode aad_token). Scoped to the
// endpoint, not the workspace. A custom role with only the score action is narrower still
// (docs/deploy-azure.md, appendix).
param workspaceName string
param endpointName string
param principalId string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource endpoint 'Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-10-01' existing = {
  parent: workspace
  name: endpointName
}

var azureMlDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource scorer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(endpoint.id, principalId, azureMlDataScientist)
  scope: endpoint
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMlDataScientist)
  }
}
