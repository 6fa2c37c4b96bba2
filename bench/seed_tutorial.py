"""The seed: PyTorch's 60-minute-blitz CIFAR-10 classifier as the tutorial writes it, reading the image-folder
copy instead of downloading (torchvision.datasets.ImageFolder in place of CIFAR10; nothing else changed).
bench/tutorial_vs_seed.py runs it beside cifarlab's `tutorial` preset.

    python bench/seed_tutorial.py --data-root /data/cifar10-jpeg

Recipe: ToTensor + Normalize(0.5, 0.5), DataLoader(batch_size=4, shuffle=True, num_workers=2), the tutorial's
Net, CrossEntropyLoss, SGD(lr=0.001, momentum=0.9), 2 epochs, running loss every 2000 mini-batches, then the
test accuracy and the accuracy per class. The last line is JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    args = parser.parse_args()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = torchvision.datasets.ImageFolder(f"{args.data_root}/train", transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    testset = torchvision.datasets.ImageFolder(f"{args.data_root}/test", transform=transform)
    testloader = torch.utils.data.DataLoader(testset, batch_size=4, shuffle=False, num_workers=2)
    classes = trainset.classes

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    start = time.perf_counter()
    for epoch in range(2):
        running_loss = 0.0
        for i, (inputs, labels) in enumerate(trainloader, 0):
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if i % 2000 == 1999:
                print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 2000:.3f}", flush=True)
                running_loss = 0.0
    train_seconds = time.perf_counter() - start
    print("Finished Training")

    correct, total = 0, 0
    correct_pred = {name: 0 for name in classes}
    total_pred = {name: 0 for name in classes}
    with torch.no_grad():
        for images, labels in testloader:
            predictions = torch.max(net(images), 1)[1]
            total += labels.size(0)
            correct += (predictions == labels).sum().item()
            for label, prediction in zip(labels, predictions):
                total_pred[classes[label]] += 1
                correct_pred[classes[label]] += int(label == prediction)
    print(f"Accuracy of the network on the 10000 test images: {100 * correct // total} %")
    for name in classes:
        print(f"Accuracy for class: {name:5s} is {100 * correct_pred[name] / total_pred[name]:.1f} %")
    print(json.dumps({"train_seconds": train_seconds, "images_per_s": 2 * len(trainset) / train_seconds,
                      "accuracy": 100 * correct / total}))


if __name__ == "__main__":
    main()
