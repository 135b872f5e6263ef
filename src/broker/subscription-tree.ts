import type { Subscription } from './subscription.js';

/** The members of one shared subscription (`$share/group/filter`), served round-robin. */
export class SharedGroup {
  readonly members: Subscription[] = [];
  next = 0;
}

class TreeNode {
  readonly children = new Map<string, TreeNode>();
  /** Ordinary subscriptions ending at this node, by client id. */
  readonly subscribers = new Map<string, Subscription>();
  /** Shared subscriptions ending at this node, by share name. */
  readonly groups = new Map<string, SharedGroup>();

  isEmpty(): boolean {
    return this.children.size === 0 && this.subscribers.size === 0 && this.groups.size === 0;
  }
}

export interface MatchVisitor {
  subscription(subscription: Subscription): void;
  sharedGroup(group: SharedGroup): void;
}

/**
 * Subscriptions of all sessions, indexed by filter level so that matching a topic visits only the
 * branches that can match it, however many subscriptions there are.
 */
export class SubscriptionTree {
  private readonly root = new TreeNode();
  private subscriptionCount = 0;

  get size(): number {
    return this.subscriptionCount;
  }

  /** Adds or replaces the subscription of `subscription.clientId` to its filter. */
  add(subscription: Subscription): void {
    let node = this.root;
    for (const level of subscription.filter.split('/')) {
      let child = node.children.get(level);
      if (child === undefined) {
        child = new TreeNode();
        node.children.set(level, child);
      }
      node = child;
    }
    if (subscription.shareGroup === null) {
      if (!node.subscribers.has(subscription.clientId)) this.subscriptionCount++;
      node.subscribers.set(subscription.clientId, subscription);
      return;
    }
    let group = node.groups.get(subscription.shareGroup);
    if (group === undefined) {
      group = new SharedGroup();
      node.groups.set(subscription.shareGroup, group);
    }
    const index = group.members.findIndex((member) => member.clientId === subscription.clientId);
    if (index >= 0) {
      group.members[index] = subscription;
    } else {
      group.members.push(subscription);
      this.subscriptionCount++;
    }
  }

  /** Removes a client's subscription; returns whether there was one. */
  remove(clientId: string, filter: string, shareGroup: string | null): boolean {
    const path: TreeNode[] = [this.root];
    const levels = filter.split('/');
    let node = this.root;
    for (const level of levels) {
      const child = node.children.get(level);
      if (child === undefined) return false;
      path.push(child);
      node = child;
    }
    let removed = false;
    if (shareGroup === null) {
      removed = node.subscribers.delete(clientId);
    } else {
      const group = node.groups.get(shareGroup);
      if (group !== undefined) {
        const index = group.members.findIndex((member) => member.clientId === clientId);
        if (index >= 0) {
          group.members.splice(index, 1);
          removed = true;
          if (group.members.length === 0) node.groups.delete(shareGroup);
        }
      }
    }
    if (!removed) return false;
    this.subscriptionCount--;
    for (let i = levels.length; i > 0 && path[i].isEmpty(); i--) {
      path[i - 1].children.delete(levels[i - 1]);
    }
    return true;
  }

  /** Calls the visitor for every ordinary subscription and shared group whose filter matches `topic`. */
  match(topic: string, visitor: MatchVisitor): void {
    const levels = topic.split('/');
    // A topic starting with '$' is not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
    const dollar = topic.charCodeAt(0) === 0x24;
    matchNode(this.root, levels, 0, visitor, dollar);
  }
}

function visitNode(node: TreeNode, visitor: MatchVisitor): void {
  for (const subscription of node.subscribers.values()) visitor.subscription(subscription);
  for (const group of node.groups.values()) visitor.sharedGroup(group);
}

function matchNode(node: TreeNode, levels: string[], depth: number, visitor: MatchVisitor, dollar: boolean): void {
  const wildcardsAllowed = !(dollar && depth === 0);
  if (wildcardsAllowed) {
    // '#' matches this level and everything below it, including the parent itself [MQTT-4.7.1-2].
    const hash = node.children.get('#');
    if (hash !== undefined) visitNode(hash, visitor);
  }
  if (depth === levels.length) {
    visitNode(node, visitor);
    return;
  }
  const exact = node.children.get(levels[depth]);
  if (exact !== undefined) matchNode(exact, levels, depth + 1, visitor, dollar);
  if (wildcardsAllowed) {
    const plus = node.children.get('+');
    if (plus !== undefined) matchNode(plus, levels, depth + 1, visitor, dollar);
  }
}
